import json

import pytest

from w2svd.benchmark import BenchmarkConfig, Grid, Row, markdown, run_benchmark
from w2svd.config import ConfigError, from_dict


def test_benchmark_writes_a_well_formed_table(tmp_path, tiny64_pipeline_dir):
    cfg = BenchmarkConfig(
        rows=[Row("real", "real"), Row("base-3", "base", steps=3), Row("euler-1", "base", steps=1)],
        base=str(tiny64_pipeline_dir),
        reference="base-3",
        n=4,
        batch_size=2,
        out_md=str(tmp_path / "b.md"),
        out_json=str(tmp_path / "b.json"),
        grid=Grid(rows=["base-3", "euler-1"], prompts=2, path=str(tmp_path / "g.png")),
    )
    report = run_benchmark(cfg)
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["base-3"]["nfe"] == 3 and rows["euler-1"]["nfe"] == 1
    assert rows["base-3"]["speedup_denoise"] == pytest.approx(1.0)
    assert rows["euler-1"]["speedup_denoise"] > 1.0  # one network call instead of three
    assert rows["real"]["fd_clip"] < rows["base-3"]["fd_clip"]  # a random model is far from real clips
    assert rows["real"]["adherence/motion"] == 1.0
    text = (tmp_path / "b.md").read_text()
    assert text.count("\n| ") >= 4 and "FD-clip" in text and "| real |" in text
    assert json.loads((tmp_path / "b.json").read_text())["rows"][1]["name"] == "base-3"
    assert (tmp_path / "g.png").stat().st_size > 0
    assert markdown(report) == text


def test_benchmark_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="reference='base-28' is not a row name"):
        from_dict(BenchmarkConfig, {"rows": [{"name": "a", "kind": "real"}], "reference": "base-28"})
    with pytest.raises(ConfigError, match="kind='teacher' must be"):
        from_dict(BenchmarkConfig, {"rows": [{"name": "a", "kind": "teacher"}]})
