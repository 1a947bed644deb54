"""tools/curves.py: the collapse and drift rule of docs/experiments.md on validation curves."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from curves import main, verdict  # noqa: E402


def points(*fd, motion=0.6):
    return [
        {"step": 500 * (i + 1), "generator_updates": 100 * (i + 1), "fd_clip": v, "fd_frame": 1.0}
        | {"adherence/motion": motion}
        for i, v in enumerate(fd)
    ]


def test_collapse_needs_two_validations_above_the_rule():
    assert verdict(points(700, 600, 750, 600)) == "stable"  # one point +25%, then back: noise, not collapse
    assert verdict(points(700, 600, 750, 730)).startswith("collapse at 300 updates")
    assert verdict(points(700, 600, 700)) == "drift"  # last +17% above the best
    assert verdict(points(700, 650, 640)) == "stable"
    assert verdict(points(700, 650, motion=0.1)).startswith("collapse at 100 updates (motion adherence")
    assert verdict(points(700)) == "too short"


def test_cli_reads_runs_and_names_a_missing_curve(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "validation").mkdir(parents=True)
    (run / "validation" / "metrics.jsonl").write_text("\n".join(json.dumps(p) for p in points(700, 600, 750, 730)))
    assert main([str(run)]) == 0
    assert "collapse at 300 updates" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "no validation/metrics.jsonl" in capsys.readouterr().err
