"""Encode a folder of captioned videos for training: python training/prepare.py --videos DIR --base MODEL --out DIR.

Re-running the same command resumes (finished shards are skipped). Data-parallel:
accelerate launch --num_processes 8 training/prepare.py ... (each process encodes every 8th shard).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from w2svd.data.videos import parse_buckets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Encode captioned videos into latent/text shards with an index.json.")
    ap.add_argument("--videos", required=True, help="folder of .mp4/.webm/.mov files (searched recursively)")
    ap.add_argument(
        "--captions",
        default=None,
        help='JSONL of {"file", "caption"} or CSV with file,caption; default: a .txt next to each video',
    )
    ap.add_argument("--base", required=True, help="pipeline whose VAE/text encoders to use: folder or Hub id")
    ap.add_argument("--out", required=True, help="output folder (shards, index.json, skipped.jsonl)")
    ap.add_argument("--num-frames", type=int, default=9, help="frames per clip (4k+1)")
    ap.add_argument("--fps", type=float, default=8.0, help="frame rate the clip is sampled at")
    ap.add_argument("--buckets", default="64x64", help="comma-separated HEIGHTxWIDTH buckets, e.g. 544x960,960x544")
    ap.add_argument("--shard-size", type=int, default=64, help="clips per shard")
    ap.add_argument("--batch-size", type=int, default=1, help="clips per VAE call")
    ap.add_argument("--no-vae-tiling", action="store_true", help="encode whole frames (more memory)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from w2svd.data.prepare import PrepareError, prepare

    try:
        index = prepare(
            args.videos,
            args.out,
            args.base,
            captions=args.captions,
            num_frames=args.num_frames,
            fps=args.fps,
            buckets=parse_buckets(args.buckets),
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            vae_tiling=not args.no_vae_tiling,
            progress=not args.no_progress,
        )
    except (PrepareError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
