"""The frozen base every distillation method starts from: a real pipeline, or a random tiny one for tests."""

from __future__ import annotations

import torch


def load_teacher(cfg, device: torch.device, dtype: torch.dtype = torch.float32):
    """The frozen base pipeline in ``dtype``, from ``cfg.base`` (a real one) or ``cfg.random_base`` (a tiny one)."""
    if cfg.random_base:
        from w2svd.methods.flow_matching import FlowMatchingConfig, build_embedded_pipeline

        rb = cfg.random_base
        fm = FlowMatchingConfig(vae_init=rb["vae_init"], text=rb["text"], transformer=rb["transformer"])
        pipe = build_embedded_pipeline(fm)
        base_name = "random-tiny"
    else:
        from w2svd.pipeline import load_base

        pipe, _ = load_base(cfg.base, device=str(device), dtype=dtype)
        base_name = cfg.base
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe, base_name
