"""Sanity of the evaluation metrics with the shipped feature networks, plus a 2-step run of their training."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from w2svd.config import from_dict
from w2svd.data import ATTRIBUTE_NAMES, heldout_examples
from w2svd.eval import evaluate_generator, frechet_distance, load_feature_nets, real_generator
from w2svd.eval.metrics import LADDER, adherence, degradation_ladder, embed, reference_examples, render_examples
from w2svd.trainer import build_method, train
from w2svd.training.config import TrainConfig

N = 96  # clips per set: enough for stable 64-dim Frechet distances, small enough for one core


@pytest.fixture(scope="module")
def nets():
    torch.set_num_threads(1)
    return load_feature_nets()


@pytest.fixture(scope="module")
def ladder(nets):
    rows = degradation_ladder(N, nets)
    return {(name, strength): (fdf, fdc) for name, strength, fdf, fdc in rows}


def whitened(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) samples with mean exactly 0 and sample covariance exactly I."""
    x = rng.normal(size=(n, d))
    x -= x.mean(0)
    return x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T


def test_frechet_distance_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(1)
    d, scale, mu = 8, 1.7, rng.normal(size=8)
    a = whitened(rng, 500, d)  # N(0, I) exactly
    b = scale * whitened(rng, 500, d) + mu  # N(mu, scale^2 I) exactly
    assert frechet_distance(a, b) == pytest.approx(mu @ mu + d * (1 - scale) ** 2, rel=1e-9)
    assert frechet_distance(a, a + mu) == pytest.approx(mu @ mu, rel=1e-9)
    # Full covariances: agrees with the textbook formula through scipy's sqrtm.
    c, e = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)), rng.normal(size=(300, d)) @ rng.normal(size=(d, d))
    ca, ce = np.cov(c, rowvar=False), np.cov(e, rowvar=False)
    mean_term = ((c.mean(0) - e.mean(0)) ** 2).sum()
    expected = mean_term + np.trace(ca + ce - 2 * scipy.linalg.sqrtm(ca @ ce).real)
    assert frechet_distance(c, e) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((10, 4)), np.zeros((10, 5)))


def test_real_vs_real_fd_is_small(ladder):
    floor_frame, floor_clip = ladder[("real", 0.0)]
    blur_frame, blur_clip = ladder[("blur", 2.0)]
    assert floor_frame < 0.1 * blur_frame and floor_clip < 0.2 * blur_clip


@pytest.mark.parametrize("kind", ["blur", "noise"])
def test_fd_grows_with_degradation(ladder, kind):
    steps = [ladder[("real", 0.0)]] + [ladder[(k, s)] for k, s in LADDER if k == kind]
    for metric in (0, 1):
        values = [row[metric] for row in steps]
        assert values == sorted(values) and len(set(values)) == len(values), f"{kind} metric {metric}: {values}"


def test_frozen_clips_hurt_fd_clip_more_than_fd_frame(ladder):
    floor_frame, floor_clip = ladder[("real", 0.0)]
    frozen_frame, frozen_clip = ladder[("freeze", 0.0)]
    assert frozen_clip / floor_clip > 3 * (frozen_frame / floor_frame)
    assert frozen_clip > 5 * floor_clip


def test_adherence_of_real_clips(nets):
    examples = heldout_examples(N)
    result = adherence(render_examples(examples), examples, nets)
    low = {k: v for k, v in result.items() if k != "appearance_all" and v < 0.95}
    assert not low, f"adherence below 95% on real clips: {low}"
    assert set(ATTRIBUTE_NAMES) <= set(result)


def test_adherence_detects_wrong_prompts(nets):
    examples = heldout_examples(N)
    shuffled = [examples[(i + 1) % N] for i in range(N)]  # each clip scored against another prompt
    result = adherence(render_examples(examples), shuffled, nets)
    assert result["appearance_all"] < 0.2 and result["motion"] < 0.5


def test_evaluate_generator_with_real_clips(nets):
    result = evaluate_generator(real_generator(heldout_examples(32)), n=32, batch_size=16, nets=nets)
    assert result["fd_frame"] == pytest.approx(result["fd_frame_real"])
    assert result["fd_clip"] == pytest.approx(result["fd_clip_real"])
    assert result["adherence/appearance_mean"] >= 0.95 and "adherence/motion" in result
    assert 0.8 < result["motion_vs_real"] < 1.25 and 0.8 < result["flicker_vs_real"] < 1.25  # other render seeds


def test_the_first_pairs_figures_are_what_a_smaller_evaluation_gives(nets):
    from w2svd.eval.metrics import blur

    real = real_generator(heldout_examples(48))

    def blurred(prompts, seeds):
        return blur(real(prompts, seeds), 1.0)

    big = evaluate_generator(blurred, n=48, batch_size=16, nets=nets, first=16)
    small = evaluate_generator(blurred, n=16, batch_size=16, nets=nets)
    assert big["fd_clip@16"] == pytest.approx(small["fd_clip"]) and big["fd_frame@16"] == pytest.approx(
        small["fd_frame"]
    )
    assert big["fd_clip@16"] != pytest.approx(big["fd_clip"], rel=0.01)
    with pytest.raises(ValueError, match=r"first=48 must be 0 \(off\) or in \[2, n=48\)"):
        evaluate_generator(blurred, n=48, nets=nets, first=48)


def test_evaluate_generator_names_bad_output(nets):
    def bad(prompts, seeds):
        return np.zeros((len(prompts), 9, 32, 32, 3), np.uint8)

    with pytest.raises(ValueError, match="generate_fn must return a uint8 array of shape"):
        evaluate_generator(bad, n=4, batch_size=4, nets=nets)


def test_reference_seeds_differ_and_embedding_shapes(nets):
    examples = heldout_examples(4)
    ref = reference_examples(examples)
    assert all(r.seed != e.seed and r.prompt == e.prompt for r, e in zip(ref, examples))
    emb = embed(render_examples(examples), nets)
    assert emb.frame_features.shape == (4 * 9, nets.frame.cfg.feature_dim)
    assert emb.clip_features.shape == (4, nets.clip.cfg.feature_dim)


def test_features_method_trains_two_steps_and_exports(tmp_path):
    tiny = {"width": 8, "feature_dim": 8}
    cfg = from_dict(
        TrainConfig,
        {
            "method": {"name": "features", "frame": tiny, "clip": tiny, "frames_per_clip": 2, "val_clips": 4},
            "output_dir": str(tmp_path),
            "max_steps": 2,
            "batch_size": 2,
            "checkpoint_every": 1,
            "threads": 1,
        },
    )
    method = build_method(cfg, torch.device("cpu"))
    first, again = method.batch(5), method.batch(5)
    assert torch.equal(first["video"], again["video"]) and torch.equal(first["frames"], again["frames"])
    assert first["frames"].shape == (4, 3, 64, 64)
    out = train(cfg, progress=False)
    loaded = load_feature_nets(out)
    assert loaded.frame.cfg.feature_dim == 8 and "frame/eye_colour" in loaded.info["heldout_accuracy"]
    assert (out / "checkpoints").is_dir()
    features, logits = loaded.clip(torch.zeros(1, 3, 9, 64, 64))
    assert features.shape == (1, 8) and logits["motion"].shape == (1, 5)
