"""`python -m w2svd.eval --real` scores real clips as a generator; `--ladder` prints FDs of degraded real clips."""

from __future__ import annotations

import argparse
import json
import time

import torch

from w2svd.data import heldout_examples
from w2svd.eval.features import load_feature_nets
from w2svd.eval.metrics import degradation_ladder, evaluate_generator, format_report, real_generator
from w2svd.eval.temporal import ladder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m w2svd.eval", description=__doc__)
    ap.add_argument("--real", action="store_true", help="evaluate real clips of the held-out prompts as a generator")
    ap.add_argument("--ladder", action="store_true", help="FD, motion and flicker of degraded real clips")
    ap.add_argument("--n", type=int, default=256, help="held-out prompts (default 256)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--weights", default=None, help="folder with feature_nets.safetensors (default assets/features)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if not args.real and not args.ladder:
        ap.error("nothing to do: give --real and/or --ladder")
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = load_feature_nets(args.weights)
    report: dict = {}
    if args.real:
        start = time.perf_counter()
        result = evaluate_generator(real_generator(heldout_examples(args.n)), args.n, args.batch_size, nets)
        print(f"real clips as the generator ({time.perf_counter() - start:.1f} s)")
        print(format_report(result))
        report["real"] = result
    if args.ladder:
        rows = degradation_ladder(args.n, nets)
        print(f"\n{'degradation':<14}{'fd_frame':>10}{'fd_clip':>10}")
        for name, strength, fdf, fdc in rows:
            label = name if name in ("real", "freeze") else f"{name} {strength:g}"
            print(f"{label:<14}{fdf:>10.3f}{fdc:>10.3f}")
        report["ladder"] = [dict(zip(("name", "strength", "fd_frame", "fd_clip"), r)) for r in rows]
        temporal = ladder(args.n)
        real = temporal[0]
        print(f"\n{'degradation':<14}{'motion':>8}{'x real':>8}{'face share':>12}{'flicker':>9}{'x real':>8}")
        for r in temporal:
            label = r["name"] if r["name"] in ("real", "freeze") else f"{r['name']} {r['strength']:g}"
            mr, fr = r["motion"] / real["motion"], r["flicker"] / real["flicker"]
            print(f"{label:<14}{r['motion']:>8.2f}{mr:>8.2f}{r['face_share']:>12.1%}{r['flicker']:>9.2f}{fr:>8.2f}")
        report["temporal_ladder"] = temporal
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
