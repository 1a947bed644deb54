"""A second backbone family, Wan 2.1, through the same adapter interface: tiny random WanPipeline classes."""

import re

import numpy as np
import pytest
import torch
from tiny_config import tiny_cfg
from wan_fixtures import save_tiny_wan

from w2svd import trainer as loop
from w2svd.backbones import WanBackbone, backbone_for
from w2svd.methods.distill import GENERATOR
from w2svd.pipeline import VideoGenerator, load_base


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan") / "base")


def test_wan_backbone_latents_text_and_velocity(wan_folder, one_torch_thread):
    pipe, _ = load_base(str(wan_folder), device="cpu", dtype=torch.float32)
    backbone = backbone_for(pipe)
    assert isinstance(backbone, WanBackbone) and not backbone.guidance_embedded
    video = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = backbone.encode_video(video)
    assert tuple(z.shape[1:]) == backbone.latent_shape(5, 32, 32) == (4, 2, 4, 4)
    # per-channel normalisation with the VAE's latents_mean / latents_std, inverted exactly by decode
    mu = pipe.vae.encode(video).latent_dist.mode()
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert torch.allclose(z, (mu - mean) / std, atol=1e-6)
    assert torch.allclose(backbone.decode_latents(z), pipe.vae.decode(mu).sample, atol=1e-5)
    cond = backbone.encode_prompts(["a woman with long red hair talking", "a man"])
    assert cond.mask is None and cond.pooled is None and cond.embeds.shape[:2] == (2, WanBackbone.max_sequence_length)
    n_short = len(pipe.tokenizer("a man").input_ids)
    assert cond.embeds[1, n_short:].abs().max() == 0 and cond.embeds[1, :n_short].abs().max() > 0
    v = backbone.velocity(z, torch.tensor([0.7, 0.2]), cond)
    assert v.shape == z.shape and torch.isfinite(v).all()
    targets = [n for n, _ in pipe.transformer.named_modules() if re.fullmatch(WanBackbone.lora_target_regex, n)]
    assert len(targets) == 2 * 10  # per block: 4 self-attention, 4 cross-attention, 2 feed-forward linears


def test_w2svd_distills_tiny_wan_and_stock_wan_pipeline_loads_the_lora(wan_folder, tmp_path, monkeypatch):
    built, build = [], loop.build_method
    monkeypatch.setattr(loop, "build_method", lambda cfg, device: built.append(build(cfg, device)) or built[-1])
    cfg = tiny_cfg(tmp_path, base_dir=wan_folder, max_steps=4, checkpoint_every=4)
    run = loop.train(cfg, progress=False)
    method = built[0]
    assert isinstance(method.backbone, WanBackbone) and method.generator_updates == 2
    assert (run / "validation").is_dir()  # the validation grid was rendered through the Wan VAE

    # the exported LoRA in a stock WanPipeline computes what the trained generator LoRA computes
    from diffusers import WanPipeline

    stock = WanPipeline.from_pretrained(wan_folder)
    stock.load_lora_weights(str(run), weight_name="pytorch_lora_weights.safetensors")
    x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    cond = method.backbone.encode_prompts(["a woman with long red hair talking"])
    with torch.no_grad():
        ours = method.score(GENERATOR, cond)(x, torch.tensor([0.8]))
        theirs = WanBackbone(stock).velocity(x, torch.tensor([0.8]), cond)
        stock.disable_lora()
        base = WanBackbone(stock).velocity(x, torch.tensor([0.8]), cond)
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    assert float((ours - base).abs().max()) > 1e-4  # the LoRA did train

    # its model card names the Wan pipeline in the usage snippet and tags
    from w2svd.cards import lora_card
    from w2svd.generator_meta import GeneratorMeta

    meta = GeneratorMeta.read_json(run / "w2svd_lora.json")
    card = lora_card(meta, "org/wan-base", "org/wan-w2svd", {"height": 32, "width": 32, "num_frames": 5})
    assert meta.pipeline == "WanPipeline" and "pipe = WanPipeline.from_pretrained(" in card and "wan]" in card

    # and w2svd's own sampler runs it few-step on the Wan base
    gen = VideoGenerator.from_pretrained(str(wan_folder), lora=str(run), device="cpu")
    result = gen.few_step(["a woman with long red hair talking"], [0])
    assert result.frames.shape == (1, 5, 32, 32, 3) and result.nfe == 4 and np.ptp(result.frames) > 0
