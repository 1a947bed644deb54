"""Ship a decoder-only VAE fine-tune into the embedded base: python tools/ship_vae.py RUN_DIR [--base FOLDER].

RUN_DIR is the output of a decoder-only VAE run (`training/configs/embedded_vae_decoder.yaml`,
`embedded_vae_motion.yaml`; it holds `vae/`). The tool checks that the encoder side (encoder + quant_conv) and
the config are unchanged, so the latent space that the base's transformer and every LoRA were trained on stays
valid; measures the old and the new VAE as stored (fp16) on held-out clips: PSNR, PSNR over moving pixels, and
(at the clip encoder's 9x64x64) how often the clip encoder still reads the right motion after a round trip;
refuses a VAE that is worse on any of them (unless --force); then replaces `BASE/vae` atomically and appends
the figures to the base's model card.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def heldout_psnr(vae, clips: int, num_frames: int, size: int) -> tuple[float, float]:
    """Mean held-out PSNR over whole clips and over moving pixels (dB)."""
    import numpy as np
    import torch

    from w2svd.data import PortraitDataset
    from w2svd.methods.vae import moving_psnr, psnr

    data = PortraitDataset("heldout", num_frames=num_frames, size=size)
    whole, moving = [], []
    with torch.no_grad():
        for i in range(clips):
            v = data[i]["video"][None]
            rec = vae.decode(vae.encode(v).latent_dist.mode()).sample
            whole.append(psnr(rec, v))
            moving.append(moving_psnr(rec, v))
    return float(np.mean(whole)), float(np.nanmean(moving))


def roundtrip_motion(vae, clips: int) -> float:
    """Share of held-out clips whose motion kind the clip encoder still reads after a VAE round trip."""
    from w2svd.data import heldout_examples, labels_of, render_examples
    from w2svd.eval import load_feature_nets
    from w2svd.eval.probe import MOTION, read_motion, vae_roundtrip

    examples = heldout_examples(clips)
    pred = read_motion(vae_roundtrip(vae, render_examples(examples)), load_feature_nets())
    return float((pred == labels_of(examples)[:, MOTION]).mean())


def as_fp16(vae):
    """The VAE as it will be stored (fp16), upcast again the way CPU loaders use it."""
    import copy

    import torch

    return copy.deepcopy(vae).to(torch.float16).to(torch.float32)


def decoder_only_problem(new, old, old_dir: Path) -> str | None:
    """Why ``new`` cannot replace ``old`` in an existing base (another config or encoder), or None."""
    import torch

    from w2svd.data.latent_cache import DECODER_SIDE

    skip = {"_name_or_path", "_diffusers_version"}
    keys = (set(new.config) | set(old.config)) - skip
    diff = sorted(k for k in keys if new.config.get(k) != old.config.get(k))
    if diff:
        return (
            f"the VAE config differs from {old_dir} in {diff}; only a decoder fine-tune can be shipped "
            "into an existing base (retrain the teacher for a new VAE)"
        )
    old_sd, new_sd = old.state_dict(), new.state_dict()
    changed = [k for k in old_sd if not k.startswith(DECODER_SIDE) and not torch.equal(old_sd[k], new_sd[k])]
    if changed:
        return (
            f"{len(changed)} encoder tensors differ (e.g. {changed[0]}): the latent space changed, so the "
            "base's transformer and LoRAs would no longer match; train with method.decoder_only: true"
        )
    return None


def swap_in(new, old_dir: Path, base: Path) -> None:
    """Write the new VAE (fp16) beside the old one, then swap them: never a half-written folder."""
    import torch

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        staged = Path(tmp) / "vae"
        new.to(torch.float16).save_pretrained(staged)
        backup = Path(tmp) / "old"
        old_dir.rename(backup)
        try:
            staged.rename(old_dir)
        except OSError:  # put the old VAE back before the temporary folder (and it) is removed
            backup.rename(old_dir)
            raise


def update_card(card: Path, run_dir: Path, figures: dict) -> None:
    """Record the new figures and this fine-tune in the base card's JSON report (its history is kept)."""
    if not card.is_file():
        return
    text = card.read_text()
    m = re.search(r"```json\n(.*?)\n```", text, re.S)
    if not m:
        return
    report = json.loads(m.group(1))
    vae = report.setdefault("vae", {})
    history = vae.pop("decoder_finetunes", [])
    if "decoder_finetune" in vae:  # the single entry older cards have
        history.append(vae.pop("decoder_finetune"))
    entry = {"run": str(run_dir), "encoder and latent space": "kept"}
    run_cfg = run_dir / "config.yaml"
    if run_cfg.is_file():
        import yaml

        method = yaml.safe_load(run_cfg.read_text()).get("method", {})
        entry.update({k: method[k] for k in ("motion_weight", "temporal_weight") if k in method})
    for name, (b, a) in figures.items():
        vae[name] = a
        entry[f"{name}_fp16_before"], entry[f"{name}_fp16_after"] = b, a
    vae["decoder_finetunes"] = history + [entry]
    card.write_text(text[: m.start(1)] + json.dumps(report, indent=1) + text[m.end(1) :])


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # .to(float16) warns about modules to keep in fp32; this VAE has none
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--base", type=Path, default=ROOT / "assets" / "embedded" / "base")
    ap.add_argument("--clips", type=int, default=32, help="held-out clips for PSNR (default 32, as in training)")
    ap.add_argument(
        "--motion-clips",
        type=int,
        default=256,
        help="held-out clips for round-trip motion (default 256; 0 skips; needs 9x64x64 clips)",
    )
    ap.add_argument("--force", action="store_true", help="ship even if a held-out figure gets worse")
    args = ap.parse_args(argv)
    new_dir, old_dir = args.run_dir / "vae", args.base / "vae"
    for d in (new_dir, old_dir):
        if not (d / "config.json").is_file():
            print(f"error: {d} is not a VAE folder (no config.json); finish the run first", file=sys.stderr)
            return 2
    new = AutoencoderKLHunyuanVideo.from_pretrained(new_dir, torch_dtype=torch.float32).eval()
    old = AutoencoderKLHunyuanVideo.from_pretrained(old_dir, torch_dtype=torch.float32).eval()
    problem = decoder_only_problem(new, old, old_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    defaults_file = args.base / "generation_defaults.json"
    defaults = json.loads(defaults_file.read_text()) if defaults_file.is_file() else {}
    shape = {"num_frames": defaults.get("num_frames", 9), "size": defaults.get("height", 64)}
    old16, new16 = as_fp16(old), as_fp16(new)
    figures = {"psnr_heldout_db": [], "psnr_moving_heldout_db": [], "roundtrip_motion": []}
    for vae in (old16, new16):
        whole, moving = heldout_psnr(vae, args.clips, **shape)
        figures["psnr_heldout_db"].append(whole)
        figures["psnr_moving_heldout_db"].append(moving)
    if args.motion_clips and shape == {"num_frames": 9, "size": 64}:
        figures["roundtrip_motion"] = [roundtrip_motion(v, args.motion_clips) for v in (old16, new16)]
    else:
        del figures["roundtrip_motion"]
    print(f"held-out figures, fp16 weights (PSNR over {args.clips} clips, motion over {args.motion_clips}):")
    for name, (b, a) in figures.items():
        print(f"  {name}: {b:.4g} -> {a:.4g}")
    worse = [name for name, (b, a) in figures.items() if a < b]
    if (worse or all(a == b for b, a in figures.values())) and not args.force:
        why = f"worse on {', '.join(worse)}" if worse else "no figure changed"
        print(f"error: not better ({why}); nothing shipped (pass --force to ship anyway)", file=sys.stderr)
        return 1
    swap_in(new, old_dir, args.base)
    update_card(args.base / "README.md", args.run_dir, figures)
    size = sum(f.stat().st_size for f in old_dir.iterdir()) / 1e6
    print(f"shipped {new_dir} -> {old_dir} ({size:.2f} MB, fp16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
