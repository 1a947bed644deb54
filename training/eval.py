"""Score models on the held-out portrait pairs: python training/eval.py --config training/configs/<name>.yaml."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from w2svd.benchmark import BenchmarkConfig, run_benchmark, write_plots  # noqa: E402
from w2svd.config import ConfigError, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, epilog="Overrides: n=64 out_md=/tmp/b.md threads=2")
    ap.add_argument("--config", required=True, help="YAML benchmark config (rows, n, outputs)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (values parsed as YAML)")
    ap.add_argument(
        "--plots-only",
        action="store_true",
        help="redraw the plots from out_json and the runs' validation metrics (e.g. while runs are still training)",
    )
    ap.add_argument(
        "--remeasure",
        action="append",
        default=[],
        metavar="NAME",
        help="measure this row again even if `reuse` would keep it (repeatable; the exact row name)",
    )
    args = ap.parse_args(argv)
    try:
        cfg = load_config(BenchmarkConfig, args.config, args.overrides)
        if args.remeasure:
            cfg.remeasure = [*cfg.remeasure, *args.remeasure]
            cfg.validate()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.plots_only:
        path = Path(cfg.out_json)
        if not path.is_file():
            print(f"error: {path} does not exist; run the benchmark first (without --plots-only)", file=sys.stderr)
            return 2
        write_plots(cfg, json.loads(path.read_text()))
        print(f"redrew {cfg.plots.quality_vs_nfe} and {cfg.plots.training_curves}")
        return 0
    report = run_benchmark(cfg)
    print(f"wrote {cfg.out_md} and {cfg.out_json} ({len(report['rows'])} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
