"""The shipped embedded base (assets/embedded/base): loads offline, generates, crops the template exactly."""

import json

import numpy as np
import pytest
import torch

from w2svd.hub import EMBEDDED

BASE = EMBEDDED["base"]
PROMPT = "a man with short black hair and blue eyes, pale skin, no glasses, nodding against a yellow background"


@pytest.fixture(scope="module")
def stock_pipe():
    from diffusers import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_pretrained(BASE)


def test_folder_is_complete_and_small():
    index = json.loads((BASE / "model_index.json").read_text())
    assert index["_class_name"] == "HunyuanVideoPipeline"
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (BASE / part).is_dir(), part
    defaults = json.loads((BASE / "generation_defaults.json").read_text())
    assert defaults["num_inference_steps"] == 28 and defaults["num_frames"] == 9 and defaults["height"] == 64
    size = sum(p.stat().st_size for p in BASE.rglob("*") if p.is_file())
    assert size < 30e6, f"{size / 1e6:.1f} MB"
    assert (BASE / "README.md").read_text().count("randomly initialised") == 1


def test_template_crop_is_exact(stock_pipe):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE as T

    tok = stock_pipe.tokenizer
    prefix = T["template"].split("{}")[0]
    assert len(tok(prefix).input_ids) == T["crop_start"] == 95
    full = tok(T["template"].format(PROMPT)).input_ids
    own = tok(PROMPT).input_ids
    assert full[95 : 95 + len(own)] == own  # the crop removes the template and nothing of the prompt


def test_stock_call_with_defaults_generates_a_real_video(stock_pipe):
    d = json.loads((BASE / "generation_defaults.json").read_text())
    kw = dict(prompt=PROMPT, height=d["height"], width=d["width"], num_frames=d["num_frames"], output_type="np")
    a = stock_pipe(**kw, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).frames[0]
    b = stock_pipe(**kw, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).frames[0]
    assert a.shape == (9, 64, 64, 3)
    assert np.isfinite(a).all() and a.std() > 0.05
    assert np.array_equal(a, b)


def test_loads_offline_by_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from w2svd.pipeline import VideoGenerator

    gen = VideoGenerator.from_pretrained("embedded", device="cpu")
    assert gen.defaults.true_cfg_scale == 2.0  # the shipped base samples with classifier-free guidance 2
    res = gen.baseline([PROMPT], [5], steps=2)
    assert res.frames.shape == (1, 9, 64, 64, 3) and res.nfe == 4  # two model calls per step
    assert res.frames.std() > 10  # uint8: not a flat image
    assert gen.baseline([PROMPT], [5], steps=2, cfg_scale=1.0).nfe == 2


def test_stock_true_cfg_with_an_empty_negative_prompt_matches_our_cfg_scale(stock_pipe):
    """The model card's stock call: `true_cfg_scale` + `negative_prompt=""` is w2svd's default baseline."""
    from w2svd.pipeline import VideoGenerator

    gen = VideoGenerator.from_pretrained("embedded", device="cpu")
    d = gen.defaults
    prompt = "a woman with long red hair and glasses talking against a teal background"
    ours = gen.baseline([prompt], [5], steps=4)  # the base's default CFG, from generation_defaults.json
    assert ours.nfe == 8
    out = stock_pipe(
        prompt=prompt,
        negative_prompt="",
        true_cfg_scale=d.true_cfg_scale,
        height=d.height,
        width=d.width,
        num_frames=d.num_frames,
        num_inference_steps=4,
        guidance_scale=d.guidance_scale,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).frames[0]
    stock = np.round(out * 255).astype(np.uint8)
    assert np.abs(stock.astype(int) - ours.frames[0].astype(int)).max() <= 1
    unguided = gen.baseline([prompt], [5], steps=4, cfg_scale=1.0).frames[0]
    assert np.abs(unguided.astype(int) - ours.frames[0].astype(int)).max() > 10  # guidance changed the video
