import json

import numpy as np
import pytest

from w2svd.benchmark import BenchmarkConfig, Grid, Plots, Row, markdown, run_benchmark, write_plots
from w2svd.config import ConfigError, from_dict


def test_benchmark_writes_a_well_formed_table(tmp_path, tiny64_pipeline_dir):
    run = tmp_path / "run"  # a finished run's validation points, as DistillMethod.validate writes them
    (run / "validation").mkdir(parents=True)
    points = [{"step": 5 * u, "generator_updates": u, "fd_clip": 900.0 / u, "adherence/motion": 0.2} for u in (1, 2)]
    (run / "validation" / "metrics.jsonl").write_text("\n".join(json.dumps(p) for p in points))
    untrained = Row("dmd-4", "lora", lora=str(tmp_path / "nope"), train="python training/run.py --config x.yaml")
    cfg = BenchmarkConfig(
        rows=[
            Row("real", "real"),
            Row("base-3", "base", steps=3, run_dir=str(run)),
            Row("euler-1", "base", steps=1),
            Row("euler-1 cfg 3", "base", steps=1, cfg_scale=3.0),
            untrained,
        ],
        base=str(tiny64_pipeline_dir),
        reference="base-3",
        n=4,
        batch_size=2,
        out_md=str(tmp_path / "b.md"),
        out_json=str(tmp_path / "b.json"),
        grid=Grid(rows=["base-3", "euler-1", "dmd-4"], prompts=2, path=str(tmp_path / "g.png")),
        plots=Plots(quality_vs_nfe=str(tmp_path / "q.png"), training_curves=str(tmp_path / "c.png")),
    )
    report = run_benchmark(cfg)
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["base-3"]["nfe"] == 3 and rows["euler-1"]["nfe"] == 1 and rows["euler-1 cfg 3"]["nfe"] == 2
    assert rows["euler-1"]["cfg_scale"] == 1.0 and rows["euler-1 cfg 3"]["cfg_scale"] == 3.0  # None: the base's
    assert rows["base-3"]["speedup_denoise"] == pytest.approx(1.0)
    assert rows["euler-1"]["speedup_denoise"] > 1.0  # one network call instead of three
    assert rows["real"]["fd_clip"] < rows["base-3"]["fd_clip"]  # a random model is far from real clips
    assert rows["real"]["adherence/motion"] == 1.0
    assert rows["real"]["motion_region"] == 1.0 and 0 <= rows["base-3"]["motion_region"] <= 1
    text = (tmp_path / "b.md").read_text()
    assert text.count("\n| ") >= 4 and "FD-clip" in text and "| real |" in text
    assert json.loads((tmp_path / "b.json").read_text())["rows"][1]["name"] == "base-3"
    assert (tmp_path / "g.png").stat().st_size > 0
    assert markdown(report) == text
    assert rows["dmd-4"]["missing"] and "| dmd-4 |" not in text  # listed as untrained, with its command
    assert "- dmd-4: `python training/run.py --config x.yaml`" in text
    assert (tmp_path / "q.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [p["fd_clip"] for p in saved["rows"][1]["curve"]] == [900.0, 450.0]  # the curve travels with the row
    (run / "validation" / "metrics.jsonl").unlink()  # the run folder is gone (a fresh machine)
    (tmp_path / "c.png").unlink()
    write_plots(cfg, saved)
    assert (tmp_path / "c.png").stat().st_size > 0  # still drawn, from the saved curve


def test_benchmark_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="reference='base-28' is not a row name"):
        from_dict(BenchmarkConfig, {"rows": [{"name": "a", "kind": "real"}], "reference": "base-28"})
    with pytest.raises(ConfigError, match="kind='teacher' must be"):
        from_dict(BenchmarkConfig, {"rows": [{"name": "a", "kind": "teacher"}]})
    with pytest.raises(ConfigError, match=r"rows\[a\].cfg_scale=2.0 needs kind=base"):
        from_dict(BenchmarkConfig, {"rows": [{"name": "a", "kind": "lora", "lora": "x", "cfg_scale": 2.0}]})


def test_a_run_folder_still_training_is_not_trained_yet(tmp_path):
    from w2svd.lora import WEIGHT_NAME

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # started, nothing exported yet
    row = Row("w2svd", "lora", lora=str(run), train="python training/run.py ...")
    assert row.missing()
    (run / WEIGHT_NAME).write_bytes(b"")
    assert not row.missing()
    assert Row("copies", "transformer", path=str(run), train="...").missing()
    assert not Row("hub", "lora", lora="org/lora").missing()  # nothing to train: a Hub id


def test_a_run_folder_a_live_trainer_holds_is_still_training_whatever_it_holds(tmp_path):
    from w2svd.lora import WEIGHT_NAME
    from w2svd.training.run_folder import RunLock

    run = tmp_path / "copy"  # a finished run copied to train on: its earlier export is there
    run.mkdir()
    (run / WEIGHT_NAME).write_bytes(b"")
    row = Row("w2svd", "lora", lora=str(run), run_dir=str(run), train="python training/run.py ...")
    assert not row.missing() and not row.training()
    with RunLock(run):
        assert row.training() and row.missing()
    assert not row.missing()  # the lock is dropped with the run


def test_the_sweep_rule_says_helps_hurts_or_neutral():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("judge", Path(__file__).parents[1] / "tools" / "judge_sweep.py")
    judge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(judge)
    base = {"fd_clip": 500.0, "fd_frame": 130.0, "motion_vs_real": 1.40, "motion_region": 0.50, "flicker_vs_base": 1.3}
    assert judge.verdict({**base, "motion_vs_real": 1.2, "motion_region": 0.55}, base)[0] == "helps"
    assert judge.verdict({**base, "motion_vs_real": 1.2, "flicker_vs_base": 1.2}, base)[0] == "helps"
    assert judge.verdict({**base, "motion_vs_real": 1.0, "fd_clip": 520.0}, base)[0] == "hurts"  # +4% FD-clip
    assert judge.verdict({**base, "motion_region": 0.47}, base)[0] == "hurts"
    assert judge.verdict({**base, "motion_vs_real": 1.38}, base)[0] == "neutral"


def test_ship_rule_reads_the_intervals_and_the_point_bars():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ship", Path(__file__).parents[1] / "tools" / "ship_rule.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    base = {"fd_clip": 550.0, "fd_frame": 128.0, "adherence/appearance_mean": 0.874}

    def gap(g, lo, hi):
        return {"gap": g, "low": lo, "high": hi}

    # FD-clip worse than the shipped LoRA by the point figure but within noise: allowed
    def row(
        region_vs_shipped=gap(0.08, 0.03, 0.13), region_vs_base=gap(-0.01, -0.05, 0.03), clip=gap(20, -40, 80), **kw
    ):
        figures = {"fd_clip": 530.0, "fd_frame": 120.0, "motion_vs_real": 1.02, "flicker_vs_base": 0.98}
        figures["adherence/appearance_mean"] = 0.870
        intervals = {
            ship.SHIPPED: {"motion_region": region_vs_shipped, "fd_clip": clip},
            ship.BASE: {"motion_region": region_vs_base},
        }
        return {**figures, "intervals": intervals, **kw}

    assert ship.failures(row(), base) == []
    assert "region not better than shipped" in ship.failures(row(gap(0.04, -0.01, 0.09)), base)[0]
    assert "region worse than base" in ship.failures(row(region_vs_base=gap(-0.08, -0.13, -0.02)), base)[0]
    assert "FD-clip worse than shipped" in ship.failures(row(clip=gap(70, 10, 130)), base)[0]
    assert "attributes" in ship.failures(row(**{"adherence/appearance_mean": 0.86}), base)[0]
    assert "FD-frame 130.0 > base" in ship.failures(row(fd_frame=130.0), base)[0]
    assert "motion 1.20x" in ship.failures(row(motion_vs_real=1.2), base)[0]
    assert "no intervals" in ship.failures({**row(), "intervals": {}}, base)[0]


def reused_config(tmp_path, base_dir, rows: list[Row], n: int, **kw) -> BenchmarkConfig:
    """A benchmark of ``rows`` on ``n`` pairs writing into tmp_path, keeping unchanged rows (``reuse``)."""
    return BenchmarkConfig(
        rows=rows,
        base=str(base_dir),
        n=n,
        batch_size=n,
        out_md=str(tmp_path / "b.md"),
        out_json=str(tmp_path / "b.json"),
        reuse="unchanged",
        **kw,
    )


def test_reuse_keeps_rows_measured_before_and_rescores_retrained_ones(tmp_path, tiny64_pipeline_dir):
    rows = [Row("real", "real"), Row("euler-1", "base", steps=1)]
    cfg = reused_config(tmp_path, tiny64_pipeline_dir, rows, n=4, reference="euler-1")
    first = run_benchmark(cfg)
    second = run_benchmark(cfg)
    assert all(r["reused"] for r in second["rows"])
    assert [r["fd_clip"] for r in second["rows"]] == [r["fd_clip"] for r in first["rows"]]
    assert "| euler-1 (earlier run) |" in (tmp_path / "b.md").read_text()
    cfg.reuse = "gone"  # weights all there (base rows have none to lose): everything is measured again
    assert not any(r.get("reused") for r in run_benchmark(cfg)["rows"])
    cfg.n, cfg.reuse = 8, "unchanged"  # another n: nothing is comparable
    assert not any(r.get("reused") for r in run_benchmark(cfg)["rows"])
    cfg.n = 4
    cfg.heldout_seed += 1  # fresh pairs (a confirmation set): measured again, on other clips, and said so
    fresh = run_benchmark(cfg)
    assert not any(r.get("reused") for r in fresh["rows"]) and fresh["heldout_seed"] == cfg.heldout_seed
    assert [r["fd_clip"] for r in fresh["rows"]] != [r["fd_clip"] for r in first["rows"]]
    assert f"drawn with heldout_seed {cfg.heldout_seed}" in (tmp_path / "b.md").read_text()


def test_intervals_compare_rows_pair_by_pair_and_survive_reuse_only_with_matching_features(
    tmp_path, tiny64_pipeline_dir, monkeypatch
):
    from w2svd import benchmark
    from w2svd.benchmark import Intervals

    real_resampled = benchmark.intervals.resampled
    rows = [Row("real", "real"), Row("euler-1", "base", steps=1), Row("euler-2", "base", steps=2)]
    spec = Intervals(against=["euler-2"], resamples=100, cache=str(tmp_path / "features"))
    cfg = reused_config(tmp_path, tiny64_pipeline_dir, rows, n=8, reference="euler-2", intervals=spec)
    first = {r["name"]: r for r in run_benchmark(cfg)["rows"]}
    gaps = first["euler-1"]["intervals"]["euler-2"]
    assert gaps["fd_clip"]["gap"] == pytest.approx(first["euler-1"]["fd_clip"] - first["euler-2"]["fd_clip"])
    assert gaps["fd_clip"]["low"] <= gaps["fd_clip"]["high"]
    assert "intervals" not in first["euler-2"] and "intervals" not in first["real"]  # no self-comparison
    assert "| euler-1 | euler-2 |" in (tmp_path / "b.md").read_text()
    drawn = []
    monkeypatch.setattr(benchmark.intervals, "resampled", lambda *a, **k: drawn.append(1) or real_resampled(*a, **k))
    second = {r["name"]: r for r in run_benchmark(cfg)["rows"]}
    assert second["euler-1"]["reused"] and second["euler-1"]["intervals"]["euler-2"] == gaps  # from the cached features
    assert drawn == []  # and the cached draws: nothing resampled again
    cfg.intervals.resamples = 120  # another number of draws: drawn again
    assert len(second) == len(run_benchmark(cfg)["rows"]) and len(drawn) == 2
    cfg.intervals.resamples = 100
    for f in (tmp_path / "features").rglob("*.npz"):  # features of another measurement: no intervals, said so
        if ".draws" in f.name:  # the cached draws of the features (tested above)
            continue
        z = dict(np.load(f))
        np.savez(f, **{**z, "clip_features": z["clip_features"] + 1.0})
    third = {r["name"]: r for r in run_benchmark(cfg)["rows"]}
    assert third["euler-1"]["reused"] and "intervals" not in third["euler-1"]
    assert "No intervals" in (tmp_path / "b.md").read_text()
    cfg.remeasure = ["euler-1", "euler-2"]  # measured again: fresh features, the same figures and intervals
    fourth = {r["name"]: r for r in run_benchmark(cfg)["rows"]}
    assert not fourth["euler-1"].get("reused") and fourth["euler-1"]["intervals"]["euler-2"] == gaps


def test_interval_and_remeasure_names_are_checked():
    rows = [{"name": "a", "kind": "real"}]
    with pytest.raises(ConfigError, match=r"intervals.against names \['b'\]"):
        from_dict(BenchmarkConfig, {"rows": rows, "intervals": {"against": ["b"]}})
    with pytest.raises(ConfigError, match=r"remeasure names \['b'\]"):
        from_dict(BenchmarkConfig, {"rows": rows, "remeasure": ["b"]})
    with pytest.raises(ConfigError, match="intervals.resamples=5"):
        from_dict(BenchmarkConfig, {"rows": rows, "intervals": {"resamples": 5}})


def test_eval_cli_checks_remeasure_names(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_cli", Path(__file__).parents[1] / "training" / "eval.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    config = tmp_path / "b.yaml"
    config.write_text(f"rows: [{{name: real, kind: real}}]\nout_md: {tmp_path}/b.md\nout_json: {tmp_path}/b.json\n")
    assert cli.main(["--config", str(config), "--remeasure", "rael"]) == 2  # a typo: no run, a clear error
    assert "remeasure names ['rael'], which are not row names" in capsys.readouterr().err
