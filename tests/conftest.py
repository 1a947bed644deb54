"""Shared fixtures: tiny models built from configs (1-2 layers, few frames), no shipped weights needed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["HunyuanVideoDownBlock3D"] * 3,
    "up_block_types": ["HunyuanVideoUpBlock3D"] * 3,
    "block_out_channels": [8, 8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "spatial_compression_ratio": 4,
    "temporal_compression_ratio": 4,
    "mid_block_add_attention": True,
}
TINY_TEXT = {
    "seed": 0,
    "vocab_size": 1024,
    "llama": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    },
    "clip": {
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
    },
}
TINY_TRANSFORMER = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "num_layers": 1,
    "num_single_layers": 1,
    "num_refiner_layers": 1,
    "mlp_ratio": 2.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "guidance_embeds": False,
    "text_embed_dim": 16,
    "pooled_projection_dim": 8,
    "rope_axes_dim": [2, 2, 4],
}
TINY_DEFAULTS = {
    "height": 32,
    "width": 32,
    "num_frames": 5,
    "fps": 8,
    "num_inference_steps": 28,
    "guidance_scale": 1.0,
    "flow_shift": 3.0,
}


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "vae"
    AutoencoderKLHunyuanVideo(**TINY_VAE).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_vae_dir) -> Path:
    """A complete random tiny HunyuanVideoPipeline folder with generation_defaults.json."""
    from w2svd.methods.flow_matching import FlowMatchingConfig, build_embedded_pipeline

    cfg = FlowMatchingConfig(vae=str(tiny_vae_dir), text=TINY_TEXT, transformer=TINY_TRANSFORMER)
    pipe = build_embedded_pipeline(cfg)
    out = tmp_path_factory.mktemp("tiny") / "pipeline"
    pipe.save_pretrained(out)
    (out / "generation_defaults.json").write_text(json.dumps(TINY_DEFAULTS))
    return out


@pytest.fixture(scope="session")
def tiny64_pipeline_dir(tmp_path_factory, tiny_pipeline_dir) -> Path:
    """The tiny random pipeline at the portrait world's native 9x64x64 (what the metric networks take)."""
    import shutil

    out = tmp_path_factory.mktemp("tiny64") / "pipeline"
    shutil.copytree(tiny_pipeline_dir, out)
    (out / "generation_defaults.json").write_text(
        json.dumps({**TINY_DEFAULTS, "height": 64, "width": 64, "num_frames": 9})
    )
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module whose tests share the CPU with the app's server process (2 cores contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
