"""Ship a decoder-only VAE fine-tune into the embedded base: python tools/ship_vae.py RUN_DIR [--base FOLDER].

RUN_DIR is the output of `training/configs/embedded_vae_decoder.yaml` (it holds `vae/`). The tool checks that
the encoder side (encoder + quant_conv) and the config are unchanged, so the latent space that the base's
transformer and every LoRA were trained on stays valid; measures held-out PSNR of the old and the new VAE,
both stored as fp16; refuses a VAE that is not better (unless --force); then replaces `BASE/vae` atomically
and records the figures in the base's model card.
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


def heldout_psnr(vae, clips: int, num_frames: int, size: int) -> float:
    import numpy as np
    import torch

    from w2svd.data import PortraitDataset
    from w2svd.methods.vae import psnr

    data = PortraitDataset("heldout", num_frames=num_frames, size=size)
    scores = []
    with torch.no_grad():
        for i in range(clips):
            v = data[i]["video"][None]
            rec = vae.decode(vae.encode(v).latent_dist.mode()).sample
            scores.append(psnr(rec, v))
    return float(np.mean(scores))


def as_fp16(vae):
    """The VAE as it will be stored (fp16), upcast again the way CPU loaders use it."""
    import copy

    import torch

    return copy.deepcopy(vae).to(torch.float16).to(torch.float32)


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo
    from diffusers.utils import logging as diffusers_logging

    from w2svd.training.latent_cache import DECODER_SIDE

    diffusers_logging.set_verbosity_error()  # .to(float16) warns about modules to keep in fp32; this VAE has none
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--base", type=Path, default=ROOT / "assets" / "embedded" / "base")
    ap.add_argument("--clips", type=int, default=32, help="held-out clips for PSNR (default 32, as in training)")
    ap.add_argument("--force", action="store_true", help="ship even if held-out PSNR does not improve")
    args = ap.parse_args(argv)
    new_dir, old_dir = args.run_dir / "vae", args.base / "vae"
    for d in (new_dir, old_dir):
        if not (d / "config.json").is_file():
            print(f"error: {d} is not a VAE folder (no config.json); finish the run first", file=sys.stderr)
            return 2
    new = AutoencoderKLHunyuanVideo.from_pretrained(new_dir, torch_dtype=torch.float32).eval()
    old = AutoencoderKLHunyuanVideo.from_pretrained(old_dir, torch_dtype=torch.float32).eval()
    skip = {"_name_or_path", "_diffusers_version"}
    keys = (set(new.config) | set(old.config)) - skip
    diff = sorted(k for k in keys if new.config.get(k) != old.config.get(k))
    if diff:
        print(
            f"error: the VAE config differs from {old_dir} in {diff}; only a decoder fine-tune can be shipped "
            "into an existing base (retrain the teacher for a new VAE)",
            file=sys.stderr,
        )
        return 2
    old_sd, new_sd = old.state_dict(), new.state_dict()
    changed = [k for k in old_sd if not k.startswith(DECODER_SIDE) and not torch.equal(old_sd[k], new_sd[k])]
    if changed:
        print(
            f"error: {len(changed)} encoder tensors differ (e.g. {changed[0]}): the latent space changed, so the "
            "base's transformer and LoRAs would no longer match; train with method.decoder_only: true",
            file=sys.stderr,
        )
        return 2
    defaults_file = args.base / "generation_defaults.json"
    defaults = json.loads(defaults_file.read_text()) if defaults_file.is_file() else {}
    shape = {"num_frames": defaults.get("num_frames", 9), "size": defaults.get("height", 64)}
    before = heldout_psnr(as_fp16(old), args.clips, **shape)
    after = heldout_psnr(as_fp16(new), args.clips, **shape)
    print(f"held-out PSNR over {args.clips} clips (fp16 weights): {before:.2f} dB -> {after:.2f} dB")
    if after <= before and not args.force:
        print("error: not better; nothing shipped (pass --force to ship anyway)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(dir=args.base) as tmp:  # write beside, then swap: no half-written folder
        staged = Path(tmp) / "vae"
        new.to(torch.float16).save_pretrained(staged)
        backup = Path(tmp) / "old"
        old_dir.rename(backup)
        try:
            staged.rename(old_dir)
        except OSError:  # put the old VAE back before the temporary folder (and it) is removed
            backup.rename(old_dir)
            raise
    card = args.base / "README.md"
    if card.is_file():
        text = card.read_text()
        m = re.search(r"```json\n(.*?)\n```", text, re.S)
        if m:
            report = json.loads(m.group(1))
            vae = report.setdefault("vae", {})
            vae["psnr_heldout_db"] = after
            vae["decoder_finetune"] = {
                "config": "training/configs/embedded_vae_decoder.yaml (encoder and latent space kept)",
                "psnr_heldout_db_fp16_before": before,
                "psnr_heldout_db_fp16_after": after,
            }
            text = text[: m.start(1)] + json.dumps(report, indent=1) + text[m.end(1) :]
            card.write_text(text)
    size = sum(f.stat().st_size for f in old_dir.iterdir()) / 1e6
    print(f"shipped {new_dir} -> {old_dir} ({size:.2f} MB, fp16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
