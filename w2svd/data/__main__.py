"""`python -m w2svd.data --grid out.png` draws sample clips; `--bench` measures rendering speed."""

from __future__ import annotations

import argparse
import time

from w2svd.data.dataset import PortraitDataset, render_examples
from w2svd.data.grid import grid_image


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
