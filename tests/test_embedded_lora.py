"""The shipped W2SVD LoRA (assets/embedded/w2svd-4step): metadata, card, stock-diffusers parity, and that its
4-step samples beat plain 4-step Euler on the held-out pairs (a small-n check of the benchmark's claim)."""

import json

import numpy as np
import pytest
from safetensors import safe_open
from stock_pipeline import stock_few_step_video

from w2svd.hub import EMBEDDED
from w2svd.lora import WEIGHT_NAME, read_metadata

BASE, LORA = EMBEDDED["base"], EMBEDDED["lora"]
PROMPT = "a woman with long red hair and green eyes, pale skin, with glasses, talking against a teal background"


@pytest.fixture(scope="module")
def gen():
    from w2svd.pipeline import VideoGenerator

    return VideoGenerator.from_pretrained("embedded", lora="embedded", device="cpu")


def test_shipped_lora_has_its_metadata_card_and_only_lora_keys():
    meta = read_metadata(LORA / WEIGHT_NAME)
    assert meta["method"] == "w2svd" and meta["default_steps"] == 4
    assert meta["alpha_weak"] == json.loads((LORA / "w2svd_lora.json").read_text())["alpha_weak"]
    assert meta["training_steps"] >= 100
    sigmas = meta["sigmas_by_steps"]["4"]
    assert len(sigmas) == 5 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    with safe_open(LORA / WEIGHT_NAME, "pt") as f:
        assert all("lora" in k for k in f.keys())
    card = (LORA / "README.md").read_text()
    assert "load_lora_weights" in card and str(sigmas[:-1]) in card and "base_model:" in card
    assert "manual_seed(seed)," in card
    if meta["renoise"]:  # the re-noising generator, seeded as stock_few_step_video seeds it
        assert "torch.manual_seed(seed + 1)" in card and "stochastic_sampling=True" in card
    else:  # deterministic Euler steps: no second generator
        assert "stochastic_sampling=False" in card and "seed + 1" not in card
    assert (LORA / WEIGHT_NAME).stat().st_size < 5e6


def test_stock_pipeline_reproduces_the_shipped_few_step_video(gen):
    """The card's snippet, run as written, gives our pipeline's video for the same seed."""
    ours = gen.few_step([PROMPT], [3]).frames[0]
    stock = stock_few_step_video(BASE, LORA, PROMPT, 3, gen.defaults)
    assert np.abs(stock.astype(int) - ours.astype(int)).max() <= 1


def test_w2svd_four_steps_beats_euler_four_steps_on_held_out_pairs(gen):
    from w2svd.eval.metrics import evaluate_generator

    def few(prompts, seeds):
        return gen.few_step(prompts, seeds).frames

    def euler(prompts, seeds):
        return gen.baseline(prompts, seeds, steps=4, cfg_scale=1.0).frames  # unguided: the same 4 NFE

    # The video-level FD (appearance and motion) separates them clearly even on 48 pairs (measured 870 vs 1108).
    # The per-frame FD does not: with the fine-tuned VAE decoder it measured 273.3 vs 272.5 on 48 pairs and
    # 191.0 vs 190.9 on 128, so it is only required not to be worse (the n = 256 benchmark has it 9% better).
    w2svd, plain = evaluate_generator(few, n=48), evaluate_generator(euler, n=48)
    assert w2svd["fd_clip"] < 0.9 * plain["fd_clip"], (w2svd, plain)
    assert w2svd["fd_frame"] < 1.03 * plain["fd_frame"], (w2svd, plain)
