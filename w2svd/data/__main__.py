"""`python -m w2svd.data --grid out.png` draws sample clips; `--bench` measures rendering speed."""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageDraw

from w2svd.data.dataset import PortraitDataset, render_examples


def grid_image(clips: np.ndarray, captions: list[str] | None = None, zoom: int = 2) -> Image.Image:
    """Rows of frames (one clip per row), optionally with the caption under each row."""
    n, f, h, w, _ = clips.shape
    rows = np.concatenate([np.concatenate(list(c), axis=1) for c in clips], axis=0)
    img = Image.fromarray(rows).resize((f * w * zoom, n * h * zoom), Image.NEAREST)
    if not captions:
        return img
    line = 14
    out = Image.new("RGB", (img.width, n * (h * zoom + line)), "white")
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(captions):
        y = i * (h * zoom + line)
        out.paste(img.crop((0, i * h * zoom, img.width, (i + 1) * h * zoom)), (0, y))
        draw.text((2, y + h * zoom + 1), text, fill="black")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m w2svd.data", description=__doc__)
    ap.add_argument("--grid", help="write a PNG grid of sample clips to this path")
    ap.add_argument("--rows", type=int, default=8, help="clips in the grid (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    ap.add_argument("--split", default="train", choices=["train", "heldout"])
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bench", type=int, default=0, metavar="N", help="render N clips and print clips/s")
    args = ap.parse_args(argv)
    if not args.grid and not args.bench:
        ap.error("nothing to do: give --grid PATH and/or --bench N")
    ds = PortraitDataset(args.split, seed=args.seed, num_frames=args.frames, size=args.size)
    if args.grid:
        examples = [ds.example(i) for i in range(args.rows)]
        clips = render_examples(examples, args.frames, args.size)
        grid_image(clips, [e.prompt for e in examples]).save(args.grid)
        print(f"wrote {args.grid}: {args.rows} clips x {args.frames} frames at {args.size}px")
    if args.bench:
        examples = [ds.example(i) for i in range(args.bench)]
        start = time.perf_counter()
        render_examples(examples, args.frames, args.size)
        dt = time.perf_counter() - start
        print(
            f"rendered {args.bench} clips of {args.frames}x{args.size}x{args.size} in {dt:.2f} s: "
            f"{args.bench / dt:.0f} clips/s (one process)"
        )


if __name__ == "__main__":
    main()
