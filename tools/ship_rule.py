"""Apply the issue-16 ship rule of docs/experiments/temporal20.txt to the fixed- and fresh-pair benchmark reports.

python tools/ship_rule.py docs/experiments/sweeps.json docs/experiments/confirm.json [--rows PREFIX ...]

Every clause must hold on every report. Interval clauses read the paired bootstrap gaps the benchmark stored in
each row (``intervals`` in the eval config: the row minus the named row, with its 95% interval); point clauses
compare the figures themselves. Prints one line per row and report with each failed clause and its figure, and
"PASSES" or "fails" per row; exit status 0 either way (2 on unusable input).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BASE = "base-28"
SHIPPED = "u_shift1_1000: shift 1, 1,000 updates (shipped until the twentieth sitting)"  # the LoRA shipped when temporal20 was written
MOTION_RANGE = (0.85, 1.15)  # motion (x real)
FLICKER_MAX = 1.2  # flicker (x base)
ATTRIBUTE_POINTS = 0.01  # attributes may be this far below the base's


def failures(row: dict, base: dict) -> list[str]:
    """The clauses of temporal20 that ``row`` misses on one report (``base``: that report's base-28 row)."""
    out = []
    gaps = row.get("intervals", {})
    shipped, against_base = gaps.get(SHIPPED), gaps.get(BASE)
    if shipped is None or against_base is None:
        return [f"no intervals against {SHIPPED!r} and {BASE!r} (measure the row again with its features cached)"]
    region = shipped["motion_region"]
    if not region["low"] > 0:
        out.append(
            f"region not better than shipped: {region['gap'] * 100:+.1f} [{region['low'] * 100:+.1f}, "
            f"{region['high'] * 100:+.1f}] pts"
        )
    region = against_base["motion_region"]
    if region["high"] < 0:
        out.append(f"region worse than base: {region['gap'] * 100:+.1f} [.., {region['high'] * 100:+.1f}] pts")
    clip = shipped["fd_clip"]
    if clip["low"] > 0:
        out.append(f"FD-clip worse than shipped: {clip['gap']:+.1f} [{clip['low']:+.1f}, ..]")
    for k, label in (("fd_clip", "FD-clip"), ("fd_frame", "FD-frame")):
        if row[k] > base[k]:
            out.append(f"{label} {row[k]:.1f} > base {base[k]:.1f}")
    lo, hi = MOTION_RANGE
    if not lo <= row["motion_vs_real"] <= hi:
        out.append(f"motion {row['motion_vs_real']:.2f}x real outside {lo}-{hi}")
    if row["flicker_vs_base"] > FLICKER_MAX:
        out.append(f"flicker {row['flicker_vs_base']:.2f}x base > {FLICKER_MAX}")
    attrs, bar = row["adherence/appearance_mean"], base["adherence/appearance_mean"] - ATTRIBUTE_POINTS
    if attrs < bar:
        out.append(f"attributes {attrs:.2%} < bar {bar:.2%}")
    return out


def load(path: Path) -> dict[str, dict]:
    rows = [r for r in json.loads(path.read_text())["rows"] if not r.get("missing")]
    return {r["name"].split(":")[0]: r for r in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="benchmark JSONs (training/eval.py out_json)")
    ap.add_argument("--rows", nargs="*", default=[], help="row names (before ':') to judge; default: every LoRA")
    args = ap.parse_args(argv)
    reports = {}
    for path in args.reports:
        if not path.is_file():
            ap.error(f"no report at {path}; run training/eval.py first")
        reports[path.name] = load(path)
        if BASE not in reports[path.name]:
            ap.error(f"{path} has no {BASE!r} row")
    names = args.rows or sorted({n for rows in reports.values() for n, r in rows.items() if r.get("kind") == "lora"})
    for name in names:
        if name == SHIPPED.split(":")[0]:
            continue
        missed = {}
        for report, rows in reports.items():
            if name not in rows:
                missed[report] = ["not in this report"]
            elif why := failures(rows[name], rows[BASE]):
                missed[report] = why
        print(f"{name}: {'fails' if missed else 'PASSES'}")
        for report, why in missed.items():
            print(f"  {report}: " + "; ".join(why))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
