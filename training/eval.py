"""Score models on the held-out portrait pairs: python training/eval.py --config training/configs/<name>.yaml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from w2svd.benchmark import BenchmarkConfig, run_benchmark  # noqa: E402
from w2svd.config import ConfigError, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, epilog="Overrides: n=64 out_md=/tmp/b.md threads=2")
    ap.add_argument("--config", required=True, help="YAML benchmark config (rows, n, outputs)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (values parsed as YAML)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(BenchmarkConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    report = run_benchmark(cfg)
    print(f"wrote {cfg.out_md} and {cfg.out_json} ({len(report['rows'])} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
