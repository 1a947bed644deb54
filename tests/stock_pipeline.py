"""The model card's snippet as a test helper: a stock HunyuanVideoPipeline with a w2svd LoRA, few-step sigmas."""

import numpy as np
import torch

from w2svd.lora import read_metadata


def stock_few_step_video(base_dir, lora_dir, prompt: str, seed: int, defaults) -> np.ndarray:
    """uint8 (F, H, W, 3) from stock diffusers: load_lora_weights + sigmas= + the LoRA's sampler, as carded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    meta = read_metadata(lora_dir)
    sigmas = meta["sigmas_by_steps"][str(meta["default_steps"])][:-1]
    pipe = HunyuanVideoPipeline.from_pretrained(base_dir)
    pipe.load_lora_weights(str(lora_dir))
    stochastic = bool(meta.get("renoise", True))  # a generator trained with deterministic Euler steps: False
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, shift=1.0, stochastic_sampling=stochastic
    )
    if stochastic:
        torch.manual_seed(seed + 1)  # the re-noising draws from the global RNG; w2svd seeds it with seed + 1
    out = pipe(
        prompt=prompt,
        height=defaults.height,
        width=defaults.width,
        num_frames=defaults.num_frames,
        sigmas=sigmas,
        num_inference_steps=len(sigmas),
        guidance_scale=meta["guidance_scale"],
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).frames[0]
    return np.round(out * 255).astype(np.uint8)
