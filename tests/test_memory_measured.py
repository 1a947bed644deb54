"""The memory planner against a measured training step (training/bench_memory_13b.py's measurement, small)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from bench_memory_13b import Row, measure_row, planned  # noqa: E402

from w2svd.memtrack import LiveMemory  # noqa: E402

# The 13B slice's layout (bf16 frozen weights, fp32 LoRAs or copies, 128-channel heads, foreach AdamW), shrunk
# to 8 heads (1024 hidden) and narrow text inputs so that one training step takes seconds.
SMALL = {"frames": 9, "size": 64, "heads": 8, "text": (64, 32)}


def test_live_memory_counts_storages_once_and_releases_them():
    a = torch.zeros(1000)
    with LiveMemory() as mem:
        mem.add_existing([a, a.view(10, 100)])
        assert mem.live == 4000
        b = a + 1
        c = b.view(-1)  # a view: no new storage
        assert mem.live == 8000
        del b, c
        assert mem.live == 4000 and mem.peak == 8000
        w = torch.ones(100, 100, requires_grad=True)
        (w * 2).sum().backward()  # backward's gradient is counted too
        assert mem.live >= 4000 + 2 * 40000


@pytest.mark.parametrize(
    "row",
    [Row("w2svd-gt", 1, 1, rank=8, **SMALL), Row("w2svd", 1, 1, ckpt=True, rank=8, **SMALL)]
    + [Row("dmd-copies", 1, 1, **SMALL)],
    ids=lambda r: r.name,
)
def test_planner_is_within_15_percent_of_a_measured_training_step(row):
    threads = torch.get_num_threads()
    try:
        r = measure_row(row)
    finally:
        torch.set_num_threads(threads)
    est = planned(r)
    assert est.weights == pytest.approx(r["weights"], rel=0.01)
    assert est.optimizer == pytest.approx(r["optimizer"], rel=0.01)
    worst = max(r["phases"].values(), key=lambda p: p["peak"])
    assert est.gradients == pytest.approx(worst["grads"], rel=0.01)
    measured_step = worst["peak"]  # gradients + activations or the optimiser's temporaries, over the static part
    planned_step = est.total - est.weights - est.optimizer
    assert abs(planned_step / measured_step - 1) < 0.15, (planned_step, measured_step, r)
    total = r["weights"] + r["optimizer"] + measured_step
    assert abs(est.total / total - 1) < 0.15
