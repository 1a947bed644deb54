"""Validation curves of training runs, judged by the collapse and drift rule of docs/experiments.md.

python tools/curves.py runs/sweep/v_ratio1_w2svd runs/sweep/v_ratio1_dmd [--metric fd_clip]

Reads each run's ``validation/metrics.jsonl`` (64 or 256 held-out pairs per point; ``--metric fd_clip@64`` judges the
first 64 alone, comparable across both) and ``losses.jsonl`` (the loop's logged losses, where the run has one) and
prints a markdown table: FD-clip, FD-frame, motion adherence, motion (x real) and the mean generator and fake-score
losses since the previous point, per validation, then the verdict. Collapse: FD-clip more than 20%
above the run's best so far and still above that at the next validation, or motion adherence below 20% (chance
is 1/5); drift: the last FD-clip more than 10% above the run's best.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_curve(run: Path) -> list[dict]:
    from w2svd.methods.validation import read_metrics

    points = read_metrics(run)
    if not points:
        raise FileNotFoundError(f"{run}: no validation/metrics.jsonl (has the run validated yet?)")
    for p in points:  # a 64-pair point is its own first-64 figure (later runs score 256 pairs and log both)
        if p.get("n", 64) == 64:
            p.setdefault("fd_clip@64", p["fd_clip"])
            p.setdefault("fd_frame@64", p["fd_frame"])
    return points


def verdict(points: list[dict], key: str = "fd_clip") -> str:
    """'collapse at N updates', 'drift', 'stable' or 'too short' under the rule of docs/experiments.md."""
    if len(points) < 2:
        return "too short"
    best = float("inf")
    for i, p in enumerate(points):
        if p.get("adherence/motion", 1.0) < 0.2:
            return f"collapse at {p['generator_updates']} updates (motion adherence {p['adherence/motion']:.0%})"
        if i + 1 < len(points) and p[key] > 1.2 * best and points[i + 1][key] > 1.2 * best:
            return f"collapse at {p['generator_updates']} updates ({p[key]:.0f} vs best {best:.0f})"
        best = min(best, p[key])
    last = points[-1][key]
    return "drift" if last > 1.1 * best else "stable"


def event_losses(run: Path) -> list[dict[str, float]]:
    """The losses in a run's tensorboard files (runs from before ``losses.jsonl``), one entry per logged step."""
    events = sorted((run / "logs").rglob("events.*")) if (run / "logs").is_dir() else []
    if not events:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, dict[str, float]] = {}
    for path in events:  # one file per leg of a resumed run, oldest first: a repeated step keeps the last leg's
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.endswith("/loss"):
                for e in acc.Scalars(tag):
                    by_step.setdefault(e.step, {"step": e.step})[tag] = e.value
    return [by_step[s] for s in sorted(by_step)]


def interval_losses(run: Path, points: list[dict]) -> list[dict[str, float]]:
    """Per validation point, the mean of each logged loss over the steps since the previous point ({} if none)."""
    from w2svd.methods.validation import read_losses

    logged, means, prev = read_losses(run) or event_losses(run), [], 0
    for p in points:
        window = [entry for entry in logged if prev < entry["step"] <= p["step"]]
        keys = {k for entry in window for k in entry if k.endswith("/loss")}
        means.append({k: sum(e[k] for e in window if k in e) / sum(k in e for e in window) for k in keys})
        prev = p["step"]
    return means


def table(runs: list[Path], key: str) -> str:
    lines = [
        "| run | generator updates | pairs | FD-clip | FD-frame | FD-clip, first 64 | motion adherence "
        "| motion (x real) | generator loss | fake-score loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for run in runs:
        points = read_curve(run)
        for p, loss in zip(points, interval_losses(run, points)):
            gen, fake = (f"{loss[k]:.4f}" if k in loss else "" for k in ("generator/loss", "fake_score/loss"))
            lines.append(
                f"| {run.name} | {p['generator_updates']} | {p.get('n', 64):.0f} | {p['fd_clip']:.0f} | "
                f"{p['fd_frame']:.1f} | "
                f"{p.get('fd_clip@64', float('nan')):.0f} | "
                f"{p.get('adherence/motion', float('nan')):.0%} | {p.get('motion_vs_real', float('nan')):.2f} | "
                f"{gen} | {fake} |"
            )
        best = min(points, key=lambda p: p[key])
        verdicts.append(
            f"- {run.name}: {verdict(points, key)}; best {key} {best[key]:.0f} at {best['generator_updates']} updates, "
            f"last {points[-1][key]:.0f} at {points[-1]['generator_updates']}"
        )
    return "\n".join(lines + [""] + verdicts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--metric", default="fd_clip", help="the curve the rule judges (default fd_clip)")
    args = ap.parse_args(argv)
    try:
        print(table(args.runs, args.metric))
    except (FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
