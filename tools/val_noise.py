"""How far can a 64-pair validation FD move without the model changing? Disjoint subsets of the 256 held-out pairs.

Training curves (``metrics.jsonl``) scored ``method.val_metrics_n`` = 64 pairs, the first 64 of the benchmark's 256,
until the ninth sitting (now 256, with the first 64 as ``fd_clip@64``). This scores each LoRA once on the 256 pairs
and reports FD-clip and FD-frame on the four disjoint 64-pair subsets (the first one is exactly what a 64-pair
validation at the end of the run logs), so a curve's rise can be compared
with how much the same weights score on different pairs.

    python tools/val_noise.py runs/sweep/u_shift1_1000 runs/sweep/v_ratio1_w2svd --out docs/experiments/val_noise.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2svd.eval.metrics import subset_fds  # noqa: E402


def spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max()), "range_pct": float(100 * (v.max() - v.min()) / v.mean())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("loras", nargs="+", help="LoRA folders (run folders with pytorch_lora_weights.safetensors)")
    ap.add_argument("--n", type=int, default=256, help="held-out pairs scored (default: the benchmark's 256)")
    ap.add_argument("--subset", type=int, default=64, help="pairs per subset (default: a validation's 64)")
    ap.add_argument("--base", default="embedded", help="base model folder or 'embedded' (default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    for path in args.loras:
        if not Path(path).exists():
            ap.error(f"{path} does not exist")
    import torch

    from w2svd.data import heldout_examples
    from w2svd.eval import metrics
    from w2svd.eval.features import load_feature_nets
    from w2svd.pipeline import VideoGenerator

    if args.threads:
        torch.set_num_threads(args.threads)
    nets = load_feature_nets()
    examples = heldout_examples(args.n)
    reference = metrics.embed(metrics.render_examples(metrics.reference_examples(examples)), nets)
    gen = VideoGenerator.from_pretrained(args.base)
    report = []
    for path in args.loras:
        gen.load_lora(path)
        clips = metrics.generate_clips(lambda p, s: gen.few_step(p, s).frames, examples)
        emb = metrics.embed(clips, nets)
        subsets = subset_fds(emb, reference, args.subset)
        entry = {
            "lora": path,
            "n": args.n,
            "fd_clip": metrics.fd_clip(emb, reference),
            "fd_frame": metrics.fd_frame(emb, reference),
            "subsets": subsets,
            "fd_clip_subsets": spread([s["fd_clip"] for s in subsets]),
            "fd_frame_subsets": spread([s["fd_frame"] for s in subsets]),
        }
        report.append(entry)
        c, f = entry["fd_clip_subsets"], entry["fd_frame_subsets"]
        print(
            f"{path}: {args.n} pairs FD-clip {entry['fd_clip']:.1f} FD-frame {entry['fd_frame']:.1f}; "
            f"{len(subsets)} x {args.subset} pairs FD-clip "
            + " / ".join(f"{s['fd_clip']:.0f}" for s in subsets)
            + f" (range {c['range_pct']:.0f}% of the mean), FD-frame "
            + " / ".join(f"{s['fd_frame']:.1f}" for s in subsets)
            + f" (range {f['range_pct']:.0f}%)",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
