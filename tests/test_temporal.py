"""Temporal fidelity figures: motion magnitude, its face share and flicker, on real and degraded clips."""

import numpy as np
import pytest

from w2svd.data import heldout_examples, render_examples
from w2svd.eval import temporal
from w2svd.eval.metrics import blur, freeze, jitter
from w2svd.eval.motion_regions import band_masks


@pytest.fixture(scope="module")
def real():
    return render_examples(heldout_examples(32))


def test_frozen_clips_do_not_move_and_real_ones_do(real):
    still = temporal.summarise(freeze(real))
    assert still == {"motion": 0.0, "face_share": 0.0, "flicker": 0.0}
    moving = temporal.summarise(real)
    assert moving["motion"] > 1.0 and moving["flicker"] > 1.0 and 0.3 < moving["face_share"] < 1.0


def test_a_wobbling_head_moves_more_flickers_more_and_less_of_it_in_the_face(real):
    base, wobble = temporal.summarise(real), temporal.summarise(jitter(real, 1))
    assert wobble["motion"] > 2 * base["motion"] and wobble["flicker"] > 2 * base["flicker"]
    assert wobble["face_share"] < base["face_share"] - 0.05
    assert temporal.summarise(jitter(real, 2))["motion"] > wobble["motion"]


def test_blur_lowers_flicker(real):
    assert temporal.summarise(blur(real, 1.0))["flicker"] < 0.8 * temporal.summarise(real)["flicker"]


def test_figures_are_exact_on_a_constructed_clip():
    clip = np.zeros((1, 3, 64, 64, 3), np.uint8)
    mouth = band_masks(64)["mouth"]
    clip[0, 1][mouth] = 30  # up and back down inside the mouth band only
    f = temporal.temporal_figures(clip)
    area = mouth.sum() / mouth.size
    assert f["face_share"][0] == pytest.approx(1.0)
    assert f["motion"][0] == pytest.approx(30 * area)  # |+30| and |-30| over two frame pairs
    assert f["flicker"][0] == pytest.approx(60 * area)  # one second difference of -60


def test_ratio_and_shape_errors():
    assert temporal.ratio(3.0, 2.0) == 1.5 and temporal.ratio(1.0, 0.0) is None
    with pytest.raises(ValueError, match=r"\(N, F>=3, H, W, 3\)"):
        temporal.summarise(np.zeros((2, 2, 8, 8, 3), np.uint8))


def test_ladder_rows_start_with_real_clips():
    rows = temporal.ladder(8, steps=(("jitter", 1.0), ("freeze", 0)))
    assert [r["name"] for r in rows] == ["real", "jitter", "freeze"]
    assert rows[1]["flicker"] > rows[0]["flicker"] > rows[2]["flicker"] == 0.0
