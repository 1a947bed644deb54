"""Ship a finished embedded distillation run into assets/: python tools/ship_embedded.py RUN_DIR [--out FOLDER].

Copies the run's `pytorch_lora_weights.safetensors` (header metadata included) and `w2svd_lora.json`, writes
a model card (w2svd.cards.lora_card, with the local base path in its snippet and the training figures of the
run), the last validation grid as `samples.png`, and `train_time.json` + `validation/metrics.jsonl` (the
benchmark's training figures and curve). Default target: assets/embedded/w2svd-4step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from w2svd.cards import lora_card
    from w2svd.generator_meta import GeneratorMeta, GeneratorMetaError
    from w2svd.hub import _run_defaults
    from w2svd.lora import WEIGHT_NAME

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "embedded" / "w2svd-4step")
    ap.add_argument(
        "--command",
        default="python training/run.py --config training/configs/embedded_w2svd.yaml",
        help="the training command, for the card",
    )
    args = ap.parse_args(argv)
    weights = args.run_dir / WEIGHT_NAME
    try:
        meta = GeneratorMeta.read_lora(weights)
    except (FileNotFoundError, GeneratorMetaError) as e:
        print(f"error: {e}; finish the run first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, args.out / WEIGHT_NAME)
    meta.write_json(args.out / "w2svd_lora.json")
    repo = str(args.out.resolve().relative_to(ROOT)) if args.out.resolve().is_relative_to(ROOT) else str(args.out)
    card = lora_card(meta, "assets/embedded/base", repo, _run_defaults(args.run_dir))
    timing = args.run_dir / "train_time.json"
    if timing.is_file():
        t = json.loads(timing.read_text())
        card += (
            f"\nTrained with `{args.command}` from the shipped "
            f"base: {t['steps']} loop steps ({meta.training_steps} generator updates) in "
            f"{t['seconds'] / 60:.0f} min on a 2-core CPU. Benchmark: `docs/benchmark.md`.\n"
        )
    for extra in ("train_time.json", "validation/metrics.jsonl"):  # training figures and curve for the benchmark
        if (args.run_dir / extra).is_file():
            (args.out / extra).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.run_dir / extra, args.out / extra)
    grids = sorted((args.run_dir / "validation").glob("step-*.png"))
    if grids:
        shutil.copyfile(grids[-1], args.out / "samples.png")
        card += "\n![validation samples: held-out prompts, 4 steps](samples.png)\n"
    (args.out / "README.md").write_text(card)
    print(f"shipped {weights} -> {args.out} ({(args.out / WEIGHT_NAME).stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
