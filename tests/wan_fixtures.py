"""A tiny random Wan 2.1 pipeline (diffusers' WanPipeline classes at toy size), saved as a pipeline folder."""

import json
from pathlib import Path

import torch

Z = 4  # latent channels


def build_tiny_wan():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from w2svd.models.text import build_llama_tokenizer, caption_corpus

    torch.manual_seed(0)
    tokenizer = build_llama_tokenizer(caption_corpus(), vocab_size=1024)  # any fast tokenizer with a pad token
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    )
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=Z,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i for i in range(Z)],  # not the identity, so the normalisation is exercised
        latents_std=[1.0 + 0.5 * i for i in range(Z)],
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=Z,
        out_channels=Z,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )


def save_tiny_wan(folder: Path) -> Path:
    """The tiny pipeline as a diffusers folder with w2svd's generation defaults (5 frames of 32x32)."""
    build_tiny_wan().save_pretrained(folder)
    defaults = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 4, "guidance_scale": 1.0}
    (Path(folder) / "generation_defaults.json").write_text(json.dumps({**defaults, "flow_shift": 3.0}))
    return Path(folder)
