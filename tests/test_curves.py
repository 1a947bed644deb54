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
    out = capsys.readouterr().out
    assert "collapse at 300 updates" in out and out.count("|  |  |") == 4  # no loss log: empty loss cells
    logged = [{"step": s, "generator/loss": s / 1000, "fake_score/loss": 0.5} for s in range(250, 2001, 250)]
    (run / "losses.jsonl").write_text("\n".join(json.dumps(p) for p in logged))
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| 0.3750 | 0.5000 |" in out  # steps 250 and 500 before the first point: mean 0.375
    assert "| 1.8750 | 0.5000 |" in out  # steps 1750 and 2000 before the last
    assert main([str(tmp_path / "missing")]) == 2
    assert "no validation/metrics.jsonl" in capsys.readouterr().err


def test_losses_fall_back_to_tensorboard_files_of_older_runs(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "old"
    (run / "validation").mkdir(parents=True)
    (run / "validation" / "metrics.jsonl").write_text("\n".join(json.dumps(p) for p in points(700, 600)))
    for leg, (lo, hi, value) in enumerate([(250, 750, 0.2), (500, 1000, 0.4)]):  # the second leg repeats 500-750
        with SummaryWriter(str(run / "logs" / f"leg{leg}")) as w:
            for step in range(lo, hi + 1, 250):
                w.add_scalar("generator/loss", value, step)
                w.add_scalar("fake_score/grad_norm", 9.0, step)  # not a loss: not shown
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| 0.3000 |  |" in out  # steps 250 (first leg) and 500 (second leg's line) before the first point
    assert "| 0.4000 |  |" in out  # steps 750 and 1000: the second leg's
