"""Is the motion visible, and where the prompt puts it? Frame differences by face region.

The portrait world draws every face near the centre (position jitter of a few pixels at 64x64), so fixed bands
of rows hold the eyes and the mouth. A pixel *moves* when its grey level changes by more than ``tau`` between two
consecutive frames. Talking and smiling should move pixels in the mouth band, blinking in the eye band, and most
of the moving pixels should be there; nodding and turning move the whole head, so a good share of moving pixels
lies outside both bands. Real clips pass these checks (``python -m w2svd.eval.motion_regions``, docs/motion_regions.md).

    python -m w2svd.eval.motion_regions [--base embedded] [--lora embedded] [--lora-only] [--n 256] [--threads 2]
        [--out-md docs/motion_regions.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from w2svd.data import heldout_examples
from w2svd.data.dataset import Example, render_examples
from w2svd.eval.metrics import generate_clips

TAU = 16.0  # grey levels: a pixel moves when it changes by more than this between consecutive frames
EYE_ROWS = (-0.34, -0.02)  # bands in [-1, 1] image coordinates (top = -1), central columns only
MOUTH_ROWS = (0.08, 0.5)
CENTRAL_COLS = 0.6
REGION = {"talking": "mouth", "smiling": "mouth", "blinking": "eyes", "nodding": "head", "turning": "head"}
MIN_LOCAL = 8  # moving pixels a mouth or eye motion needs in its band to count as visible (at 64x64)
MIN_HEAD = 100  # moving pixels a head motion needs
MIN_SHARE = 0.5  # share of moving pixels a mouth or eye motion must have in its band
MIN_OUTSIDE = 0.15  # share of moving pixels a head motion must have outside both bands


def band_masks(size: int) -> dict[str, np.ndarray]:
    """(size, size) boolean masks of the eye and mouth bands."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    cols = np.abs(c) < CENTRAL_COLS
    return {
        "eyes": ((c > EYE_ROWS[0]) & (c < EYE_ROWS[1]))[:, None] & cols[None, :],
        "mouth": ((c > MOUTH_ROWS[0]) & (c < MOUTH_ROWS[1]))[:, None] & cols[None, :],
    }


def moving_pixels(clips: np.ndarray, tau: float = TAU) -> np.ndarray:
    """(N, H, W) bool: pixels whose grey level changes by more than ``tau`` between some two consecutive frames."""
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.shape[1] < 2:
        raise ValueError(f"clips must be (N, F>=2, H, W, 3) uint8, got shape {clips.shape}")
    grey = clips.astype(np.float32).mean(-1)
    return np.abs(np.diff(grey, axis=1)).max(1) > tau


def region_figures(clips: np.ndarray, motions: list[str], tau: float = TAU) -> dict[str, np.ndarray]:
    """Per clip: moving pixels, how many lie in the prompted region, and whether the motion is in the right place."""
    if len(clips) != len(motions):
        raise ValueError(f"got {len(clips)} clips but {len(motions)} motion labels")
    unknown = sorted(set(motions) - set(REGION))
    if unknown:
        raise ValueError(f"unknown motion kinds {unknown}; known: {sorted(REGION)}")
    moving = moving_pixels(clips, tau)
    bands = band_masks(clips.shape[2])
    total = moving.sum((1, 2))
    in_band = {k: (moving & m).sum((1, 2)) for k, m in bands.items()}
    outside = total - in_band["eyes"] - in_band["mouth"]
    head = np.array([REGION[m] == "head" for m in motions])
    # the region's moving pixels: the band of a mouth or eye motion; outside both bands for a head motion
    target = np.array([outside[i] if h else in_band[REGION[m]][i] for i, (m, h) in enumerate(zip(motions, head))])
    share = np.divide(target, total, out=np.zeros(len(total)), where=total > 0)
    visible = np.where(head, total >= MIN_HEAD, target >= MIN_LOCAL)
    placed = share >= np.where(head, MIN_OUTSIDE, MIN_SHARE)
    return {"moving": total, "target": target, "visible": visible, "right": visible & placed, "share": share}


@dataclasses.dataclass
class RegionRow:
    name: str
    per_motion: dict[str, dict[str, float]]  # motion -> visible, right, median moving pixels, mean in-region share
    right: float  # all clips


def summarise(name: str, clips: np.ndarray, motions: list[str]) -> RegionRow:
    f = region_figures(clips, motions)
    labels = np.array(motions)
    per = {}
    for m in REGION:
        i = labels == m
        if i.any():
            per[m] = {
                "n": int(i.sum()),
                "visible": float(f["visible"][i].mean()),
                "right": float(f["right"][i].mean()),
                "moving_px": float(np.median(f["moving"][i])),
                "share": float(f["share"][i].mean()),
            }
    return RegionRow(name, per, float(f["right"].mean()))


def format_table(rows: list[RegionRow]) -> str:
    """Markdown: right-region rate per motion kind, then moving pixels and in-region share."""
    kinds = [m for m in REGION if any(m in r.per_motion for r in rows)]
    lines = ["| samples | all | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for r in rows:
        cells = [f"{r.per_motion[m]['right']:.0%}" if m in r.per_motion else "" for m in kinds]
        lines.append(f"| {r.name} | **{r.right:.1%}** | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Median moving pixels per clip (of 4,096), and the mean share of them in the prompted region (for nodding "
        "and turning: outside the eye and mouth bands):",
        "",
    ]
    lines += ["| samples | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for r in rows:
        cells = [
            f"{r.per_motion[m]['moving_px']:.0f} ({r.per_motion[m]['share']:.0%})" if m in r.per_motion else ""
            for m in kinds
        ]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def samplers(gen, base_rows: bool = True) -> list[tuple[str, Callable[[list[str], list[int]], np.ndarray]]]:
    """The rows: the base as it samples by default, the base without guidance, 4-step Euler, and the LoRA if any.

    ``base_rows`` False keeps only the LoRA's row (the base rows cost 28-56 transformer calls per clip).
    """
    cfg = gen.defaults.true_cfg_scale
    if not base_rows:
        if gen.lora_meta is None:
            raise ValueError("no LoRA is loaded, so without the base rows there is nothing to sample")
        return [(f"w2svd-{gen.lora_meta.default_steps}", lambda p, s: gen.few_step(p, s).frames)]
    rows = [(f"base-{gen.defaults.num_inference_steps} (CFG {cfg:g}, default)", lambda p, s: gen.baseline(p, s).frames)]
    if cfg != 1.0:
        rows.append(
            (f"base-{gen.defaults.num_inference_steps}, no CFG", lambda p, s: gen.baseline(p, s, cfg_scale=1.0).frames)
        )
    rows.append(("euler-4, no CFG", lambda p, s: gen.baseline(p, s, steps=4, cfg_scale=1.0).frames))
    if gen.lora_meta is not None:
        rows.append((f"w2svd-{gen.lora_meta.default_steps}", lambda p, s: gen.few_step(p, s).frames))
    return rows


def run(gen, examples: list[Example], batch_size: int = 32, base_rows: bool = True) -> list[RegionRow]:
    motions = [e.portrait.label("motion") for e in examples]
    rows = [summarise("real clips", render_examples(examples), motions)]
    for name, fn in samplers(gen, base_rows):
        rows.append(summarise(name, generate_clips(fn, examples, batch_size), motions))
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    from w2svd.pipeline import VideoGenerator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="embedded", help="base model: 'embedded', a folder or a Hub id")
    ap.add_argument("--lora", default="embedded", help="distilled LoRA to add as a row ('none' for no LoRA row)")
    ap.add_argument("--n", type=int, default=256, help="held-out prompts (default 256)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--lora-only", action="store_true", help="only the real clips and the LoRA rows (skip the base's rows)"
    )
    ap.add_argument("--out-md", default=None, help="also write the tables to this Markdown file, with the command")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be at least 1, got {args.n}")
    if args.lora_only and args.lora == "none":
        ap.error("--lora-only needs a LoRA (--lora embedded, a folder or a Hub id), got --lora none")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    gen = VideoGenerator.from_pretrained(args.base, lora=None if args.lora == "none" else args.lora)
    d = gen.defaults
    if (d.height, d.width) != (64, 64):
        ap.error(f"the bands are laid out for the portrait world at 64x64; {args.base} samples {d.height}x{d.width}")
    table = format_table(run(gen, heldout_examples(args.n), base_rows=not args.lora_only))
    footer = f"{args.n} held-out pairs, tau {TAU:g} grey levels; {time.perf_counter() - start:.0f} s"
    print(f"{table}\n\n{footer}")
    if args.out_md:
        command = " ".join(["python -m w2svd.eval.motion_regions", *(sys.argv[1:] if argv is None else argv)])
        intro = __doc__.split("\n\n")[1]
        text = f"# Motion by face region\n\n{intro}\n\n```bash\n{command}\n```\n\n{table}\n\n{footer}\n"
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
