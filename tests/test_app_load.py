"""tools/app_load.py against the tiny model with small numbers, so the load test keeps working."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from app_fixtures import ROOT, export_tiny_lora


def load_tool():
    spec = importlib.util.spec_from_file_location("app_load", ROOT / "tools" / "app_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server(tiny_pipeline_dir, tmp_path, monkeypatch):
    tool = load_tool()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lora = export_tiny_lora(tiny_pipeline_dir, tmp_path / "lora")
    args = ["--base", str(tiny_pipeline_dir), "--lora", str(lora), "--device", "cpu", "--max-videos", "8"]
    server = tool.start_server(args, tmp_path / "work")
    yield tool, server
    tool.stop_server(server)


def test_load_tool_counts_held_rejected_and_bad_inputs(server, tmp_path):
    tool, server = server
    summary = tool.run(server, concurrent=24, requests=tool.RSS_AT + 4, videos_limit=8, downloads=tmp_path / "dl")
    table = summary.table()
    print(table)
    assert summary.errors == [] and summary.failed == 0, summary.errors
    # The queue holds 16 waiting jobs besides the running one: a burst of 24 both completes and turns some away.
    assert summary.held >= 1 and summary.rejected >= 1 and summary.held + summary.rejected == 24
    assert summary.sequential_ok == summary.requests == tool.RSS_AT + 4
    assert summary.bad_handled == summary.bad_tried == len(tool.BAD_INPUTS)
    assert 0 < summary.videos_max <= 8 and summary.gradio_cache_max > 0
    assert summary.rss_first_mb > 0 and summary.rss_last_mb > 0 and summary.alive
    assert "server alive at the end" in table and "result:" in table
