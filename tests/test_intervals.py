import numpy as np
import pytest

from w2svd.eval.intervals import PerClip, paired_bootstrap, verdict


def pairs(n=64, shift=0.0, right=0.5, seed=0, frames=3, dim=4):
    rng = np.random.default_rng(seed)
    flags = np.arange(n) < int(right * n)
    return PerClip(rng.normal(shift, 1, (n, dim)), rng.normal(shift, 1, (n, frames, dim)), flags)


def test_a_row_far_from_the_reference_is_worse_and_identical_rows_are_within_noise():
    ref = pairs(seed=1)
    near, far = pairs(seed=2), pairs(seed=3, shift=2.0)
    gaps = paired_bootstrap(near, far, ref, resamples=200)
    assert gaps["fd_clip"]["gap"] < 0 and gaps["fd_clip"]["high"] < 0  # near is closer on every resample
    assert verdict(gaps["fd_clip"]) == "better" and verdict(gaps["fd_frame"]) == "better"
    assert gaps["fd_clip"]["a_better"] == 1.0
    assert verdict(paired_bootstrap(far, near, ref, resamples=200)["fd_frame"]) == "worse"
    same = paired_bootstrap(near, near, ref, resamples=200)
    assert all(verdict(g) == "within noise" and g["gap"] == 0 for g in same.values())


def test_region_gaps_are_in_share_and_higher_is_better():
    ref = pairs(seed=1)
    a, b = pairs(seed=2, right=0.75), pairs(seed=2, right=0.25)
    gap = paired_bootstrap(a, b, ref, resamples=200)["motion_region"]
    assert gap["gap"] == pytest.approx(0.5) and gap["low"] > 0
    assert verdict(gap, higher_is_better=True) == "better" and gap["a_better"] == 1.0
    # two rows that differ on 2 of 64 pairs: the interval holds 0
    c = PerClip(a.clip_features, a.frame_features, a.right.copy())
    c.right[:2] = ~c.right[:2]
    assert verdict(paired_bootstrap(a, c, ref, resamples=300)["motion_region"], True) == "within noise"


def test_the_draw_is_paired_and_seeded():
    ref, a, b = pairs(seed=1), pairs(seed=2), pairs(seed=4, shift=0.1)
    assert paired_bootstrap(a, b, ref, resamples=100, seed=5) == paired_bootstrap(a, b, ref, resamples=100, seed=5)
    assert paired_bootstrap(a, b, ref, resamples=100, seed=5) != paired_bootstrap(a, b, ref, resamples=100, seed=6)
    with pytest.raises(ValueError, match="same pairs"):
        paired_bootstrap(a, pairs(n=32), ref)
    with pytest.raises(ValueError, match="resamples >= 100"):
        paired_bootstrap(a, b, ref, resamples=10)


def test_saved_features_come_back_only_for_the_same_measurement(tmp_path):
    a = pairs(seed=2)
    path = tmp_path / "rows" / "a.npz"
    a.save(path, {"n": 64, "fd_clip": 1.5})
    back = PerClip.load(path, {"n": 64, "fd_clip": 1.5})
    assert back is not None and np.array_equal(back.frame_features, a.frame_features)
    assert np.array_equal(back.right, a.right)
    assert PerClip.load(path, {"n": 64, "fd_clip": 1.6}) is None  # another measurement: stale
    assert PerClip.load(tmp_path / "none.npz", {}) is None
    path.write_bytes(b"not an npz")
    assert PerClip.load(path, {"n": 64, "fd_clip": 1.5}) is None
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
