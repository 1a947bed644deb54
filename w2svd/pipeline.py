"""Inference API: load a base (and later a distilled LoRA), generate few-step and many-step videos."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from w2svd.backbones import Backbone, backbone_for
from w2svd.hub import resolve
from w2svd.lora import check_lora_fits, lora_file, read_metadata
from w2svd.sampling import get_sigmas, sample_euler, sample_renoise

MAX_SEED = 2**32


@dataclasses.dataclass
class GenerationDefaults:
    """A model's native generation settings (``generation_defaults.json`` beside model_index.json)."""

    height: int = 544
    width: int = 960
    num_frames: int = 61
    fps: int = 24
    num_inference_steps: int = 28
    guidance_scale: float = 6.0  # HunyuanVideo's embedded (distilled) guidance
    flow_shift: float = 7.0

    @classmethod
    def from_folder(cls, folder: Path) -> GenerationDefaults:
        path = Path(folder) / "generation_defaults.json"
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass
class GenerationResult:
    frames: np.ndarray  # (N, F, H, W, 3) uint8
    denoise_seconds: float
    total_seconds: float
    nfe: int
    sigmas: list[float]


def load_base(name_or_path: str = "embedded", device: str | None = None, dtype: torch.dtype | None = None):
    """(pipeline, defaults) for 'embedded', a local diffusers folder, or a Hub repo id."""
    folder = resolve(name_or_path, "base")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, GenerationDefaults.from_folder(folder)


ADAPTER = "w2svd"


class VideoGenerator:
    """Few-step (distilled LoRA) and many-step (base) sampling from identical initial noise per seed."""

    def __init__(self, pipe, defaults: GenerationDefaults) -> None:
        self.pipe, self.defaults = pipe, defaults
        self.backbone: Backbone = backbone_for(pipe)
        self.lora_meta: dict | None = None  # set by load_lora

    @classmethod
    def from_pretrained(
        cls, base: str = "embedded", lora: str | None = None, device: str | None = None, dtype=None
    ) -> VideoGenerator:
        gen = cls(*load_base(base, device, dtype))
        if lora:
            gen.load_lora(lora)
        return gen

    # ---- the distilled LoRA -------------------------------------------------------------------
    def load_lora(self, name_or_path: str) -> dict:
        """Load a distilled LoRA ('embedded', folder, file or Hub id); return its w2svd metadata."""
        path = lora_file(resolve(name_or_path, "lora"))
        meta = read_metadata(path)
        if not meta.get("sigmas_by_steps"):
            raise ValueError(f"{path} has no w2svd metadata (sigmas_by_steps); was it exported by w2svd?")
        check_lora_fits(self.pipe.transformer, path)
        if self.lora_meta is not None:
            self.pipe.delete_adapters(ADAPTER)
        self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER, use_safetensors=True)
        self.lora_meta = meta
        return meta

    @property
    def few_step_options(self) -> list[int]:
        return sorted(int(k) for k in (self.lora_meta or {}).get("sigmas_by_steps", {}))

    def few_step(self, prompts: list[str], seeds: list[int], steps: int | None = None, **kw) -> GenerationResult:
        """Sample with the distilled LoRA on the sigma list it was trained for."""
        if self.lora_meta is None:
            raise RuntimeError("no distilled LoRA loaded: call load_lora(...) or pass lora= to from_pretrained")
        table = self.lora_meta["sigmas_by_steps"]
        steps = int(steps or self.lora_meta.get("default_steps", self.few_step_options[0]))
        if str(steps) not in table:
            raise ValueError(f"this LoRA supports {self.few_step_options} steps, not {steps}")
        self.pipe.enable_lora()
        self.pipe.set_adapters([ADAPTER], [1.0])
        guidance = float(self.lora_meta.get("guidance_scale", self.defaults.guidance_scale))
        sigmas = torch.tensor(table[str(steps)], dtype=torch.float32)
        return self.generate(
            prompts, seeds, sigmas=sigmas, renoise=bool(self.lora_meta.get("renoise", True)), guidance=guidance, **kw
        )

    def baseline(self, prompts: list[str], seeds: list[int], steps: int | None = None, **kw) -> GenerationResult:
        """The base model alone (LoRA disabled), Euler at its native step count."""
        if self.lora_meta is not None:
            self.pipe.disable_lora()
        try:
            return self.generate(prompts, seeds, steps=steps, **kw)
        finally:
            if self.lora_meta is not None:
                self.pipe.enable_lora()

    # ---- input checks -------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt is empty: describe the video, e.g. 'a woman with long red hair talking'")
        prompt = " ".join(prompt.split())
        tok = self.pipe.tokenizer
        n = len(tok(prompt).input_ids)
        if n > 256:
            raise ValueError(f"prompt is {n} tokens long; the text encoder takes at most 256: shorten it")
        return prompt

    @staticmethod
    def check_seed(seed: int) -> int:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < MAX_SEED:
            raise ValueError(f"seed={seed!r} must be an integer in [0, 2**32)")
        return int(seed)

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """Per-seed CPU noise, so every device and both samplers start from the same tensor."""
        d = self.defaults
        shape = self.backbone.latent_shape(d.num_frames, d.height, d.width)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])

    # ---- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sigmas: torch.Tensor | None = None,
        steps: int | None = None,
        renoise: bool = False,
        guidance: float | None = None,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
    ) -> GenerationResult:
        """Sample videos; ``sigmas`` overrides ``steps`` (default: the model's native step count)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        prompts = [self.check_prompt(p) for p in prompts]
        seeds = [self.check_seed(s) for s in seeds]
        if sigmas is None:
            sigmas = get_sigmas(steps or self.defaults.num_inference_steps, self.defaults.flow_shift)
        guidance = self.defaults.guidance_scale if guidance is None else guidance
        start = time.perf_counter()
        device = self.pipe._execution_device
        cond = self.backbone.encode_prompts(prompts)
        noise = self.initial_noise(seeds).to(device)

        def model_fn(x, s):
            return self.backbone.velocity(x, s, cond, guidance)

        t0 = time.perf_counter()
        if renoise:
            gen = torch.Generator(device=device).manual_seed(seeds[0])
            lat = sample_renoise(model_fn, noise, sigmas, generator=gen, callback=callback)
        else:
            lat = sample_euler(model_fn, noise, sigmas, callback=callback)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        video = self.backbone.decode_latents(lat.to(device))
        frames = video.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
        return GenerationResult(
            frames=frames,
            denoise_seconds=t1 - t0,
            total_seconds=time.perf_counter() - start,
            nfe=len(sigmas) - 1,
            sigmas=[float(s) for s in sigmas],
        )
