import numpy as np
import pytest
import torch

from w2svd.data import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    Portrait,
    PortraitDataset,
    caption,
    heldout_examples,
    render_clip,
    sample_portrait,
    step_batch,
)
from w2svd.data.captions import BACKGROUND, HAIR_COLOUR, MOTION


def test_attribute_counts_meet_the_spec():
    need = {"skin": 4, "hair_colour": 5, "hair_style": 3, "eye_colour": 3, "glasses": 2, "background": 5, "motion": 4}
    for name, n in need.items():
        assert len(ATTRIBUTES[name]) >= n, name


def test_render_is_deterministic_and_seed_dependent():
    p = Portrait.from_labels(
        gender="woman", skin="tan", hair_colour="red", hair_style="long", eye_colour="green",
        glasses="yes", background="teal", motion="talking",
    )  # fmt: skip
    a, b, c = render_clip(p, 1), render_clip(p, 1), render_clip(p, 2)
    assert a.shape == (9, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # pose / shirt / phase vary with the seed


def test_background_and_hair_colour_show_in_pixels():
    base = dict(gender="man", skin="pale", hair_style="long", eye_colour="blue", glasses="no", motion="blinking")
    teal = render_clip(Portrait.from_labels(hair_colour="red", background="teal", **base), 0)
    pink = render_clip(Portrait.from_labels(hair_colour="red", background="pink", **base), 0)
    assert np.abs(teal[:, 0, 0].astype(int) - pink[:, 0, 0].astype(int)).sum() > 100  # corner pixel is background
    black = render_clip(Portrait.from_labels(hair_colour="black", background="teal", **base), 0)
    assert (teal != black).any(axis=-1).mean() > 0.05  # long hair covers a good part of the frame


@pytest.mark.parametrize("motion", ATTRIBUTES["motion"])
def test_every_motion_moves(motion):
    base = dict(gender="woman", skin="brown", hair_colour="black", hair_style="short", eye_colour="brown", glasses="no")
    clip = render_clip(Portrait.from_labels(background="grey", motion=motion, **base), 3).astype(int)
    diff = np.abs(clip[1:] - clip[:-1]).sum(axis=-1)  # (F-1, H, W)
    assert (diff > 30).sum() > 20, f"{motion}: frames barely change"


def test_captions_name_every_attribute():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = sample_portrait(rng)
        text = caption(p, rng)
        assert any(w in text for w in BACKGROUND[p.label("background")])
        assert any(w in text for w in HAIR_COLOUR[p.label("hair_colour")])
        assert any(w in text for w in MOTION[p.label("motion")])
        assert "glass" in text or "spectacles" in text
    texts = {caption(sample_portrait(rng), rng) for _ in range(50)}
    assert len(texts) == 50  # not a fixed template


def test_heldout_split_is_fixed_and_disjoint_from_training():
    a, b = heldout_examples(32), heldout_examples(32)
    assert [(e.prompt, e.seed) for e in a] == [(e.prompt, e.seed) for e in b]
    assert all(e.portrait.is_heldout() for e in a)
    train = PortraitDataset("train", length=500)
    assert not any(train.example(i).portrait.is_heldout() for i in range(500))


def test_dataset_items_and_step_batches():
    ds = PortraitDataset(length=100, num_frames=5, size=32)
    item = ds[3]
    assert item["video"].shape == (3, 5, 32, 32) and item["labels"].shape == (len(ATTRIBUTE_NAMES),)
    assert -1.0 <= float(item["video"].min()) and float(item["video"].max()) <= 1.0
    b1, b2 = step_batch(ds, 0, 7, 4), step_batch(ds, 0, 7, 4)
    assert torch.equal(b1["video"], b2["video"]) and b1["prompt"] == b2["prompt"]
    assert not torch.equal(b1["video"], step_batch(ds, 0, 8, 4)["video"])
    with pytest.raises(IndexError):
        ds[100]


def test_bad_portrait_labels_are_named():
    with pytest.raises(ValueError, match="hair_colour='green'"):
        Portrait.from_labels(
            gender="man", skin="pale", hair_colour="green", hair_style="long", eye_colour="blue",
            glasses="no", background="teal", motion="talking",
        )  # fmt: skip
    with pytest.raises(ValueError, match="skin=9"):
        Portrait(0, 9, 0, 0, 0, 0, 0, 0)
