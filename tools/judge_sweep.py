"""Apply docs/experiments.md's temporal-sweep rule to a benchmark JSON: each row against a baseline row.

python tools/judge_sweep.py docs/experiments/sweeps.json --baseline t_base
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FD_TOLERANCE = 0.03  # FD-clip and FD-frame may be this much worse than the baseline's
CLOSER = 0.05  # motion (x real) must come this much closer to 1
REGION_POINTS = 0.02  # motion in region must rise (or may not fall) by this much
FLICKER_DROP = 0.05  # flicker (x base) must fall by this much


def verdict(row: dict, base: dict) -> tuple[str, str]:
    """('helps' | 'hurts' | 'neutral', why) by the rule written before the runs."""
    fd = {k: row[k] / base[k] - 1 for k in ("fd_clip", "fd_frame")}
    closer = abs(base["motion_vs_real"] - 1) - abs(row["motion_vs_real"] - 1)
    region = row["motion_region"] - base["motion_region"]
    flicker = base["flicker_vs_base"] - row["flicker_vs_base"]
    why = (
        f"FD-clip {fd['fd_clip']:+.1%}, FD-frame {fd['fd_frame']:+.1%}, motion x real {row['motion_vs_real']:.2f} "
        f"({closer:+.2f} closer), in region {region * 100:+.1f} pts, flicker x base {row['flicker_vs_base']:.2f}"
    )
    if max(fd.values()) > FD_TOLERANCE or region <= -REGION_POINTS:
        return "hurts", why
    if closer >= CLOSER and (region >= REGION_POINTS or flicker >= FLICKER_DROP):
        return "helps", why
    return "neutral", why


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="benchmark JSON (training/eval.py out_json)")
    ap.add_argument("--baseline", default="t_base", help="row name (or its prefix before ':') to compare with")
    args = ap.parse_args(argv)
    rows = [r for r in json.loads(Path(args.report).read_text())["rows"] if not r.get("missing")]
    key = {r["name"].split(":")[0]: r for r in rows}
    if args.baseline not in key:
        ap.error(f"no row {args.baseline!r}; rows: {sorted(key)}")
    base = key[args.baseline]
    for name, row in key.items():
        if name == args.baseline or "motion_vs_real" not in row or row.get("kind") not in ("lora", "transformer"):
            continue
        label, why = verdict(row, base)
        print(f"{name:<22} {label:<8} {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
