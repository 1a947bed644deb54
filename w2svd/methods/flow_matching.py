"""Rectified-flow pre-training of the teacher transformer on cached latents and text embeddings."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)

from w2svd.backbones import backbone_for
from w2svd.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, ConfigError, check_values
from w2svd.data import PortraitDataset, latent_cache
from w2svd.losses import FlowMatchingLoss, NoiseLevels
from w2svd.methods.base import Method, register
from w2svd.models.text import build_clip_tokenizer, build_llama_tokenizer, build_text_encoders, caption_corpus
from w2svd.sampling import get_sigmas, sample_euler, seeded_noise
from w2svd.training.ema import EMA, averaged

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FlowMatchingConfig:
    base: str = ""  # pipeline folder whose components (and transformer, if no `transformer` given) are reused
    vae: str = ""  # VAE folder, when building the embedded pipeline from parts
    vae_init: dict[str, Any] = dataclasses.field(default_factory=dict)  # or kwargs of a random VAE (tests)
    text: dict[str, Any] = dataclasses.field(default_factory=dict)  # {llama: {...}, clip: {...}, seed, vocab_size}
    transformer: dict[str, Any] = dataclasses.field(default_factory=dict)  # kwargs for a new transformer
    shift: float = 3.0  # flow shift for training timesteps and the saved scheduler
    caption_dropout: float = 0.1  # fraction of empty prompts, so true CFG stays possible
    cache_dir: str = "runs/cache"
    cache_clips: int = 20000
    val_prompts: int = 8
    val_steps: int = 28
    generation: dict[str, Any] = dataclasses.field(default_factory=dict)  # written to generation_defaults.json
    ema_decay: float = 0.0  # EMA of the transformer weights (0 = off); validation and export use it
    export_dtype: str = "float16"  # weights of the exported folder (loaders upcast on CPU)

    def validate(self) -> None:
        if not self.base and not ((self.vae or self.vae_init) and self.text):
            raise ConfigError("method needs either `base` (a pipeline folder) or `vae` (or `vae_init`) and `text`")
        if not self.base and not self.transformer:
            raise ConfigError("method.transformer (model kwargs) is required when no `base` pipeline is given")
        if self.export_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"method.export_dtype={self.export_dtype!r} must be float16, bfloat16 or float32")
        check_values(
            self, "method", shift=POSITIVE, cache_clips=AT_LEAST_ONE, val_prompts=NON_NEGATIVE, val_steps=AT_LEAST_ONE
        )
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"method.caption_dropout={self.caption_dropout} must be in [0, 1)")


def build_embedded_pipeline(cfg: FlowMatchingConfig) -> HunyuanVideoPipeline:
    """Assemble a HunyuanVideoPipeline from a trained VAE, new text parts and a new transformer."""
    text = dict(cfg.text)
    corpus = caption_corpus(seed=int(text.get("seed", 0)))
    vocab = int(text.get("vocab_size", 1024))
    tok, tok2 = build_llama_tokenizer(corpus, vocab), build_clip_tokenizer(corpus, vocab)
    llama, clip = build_text_encoders(
        len(tok), len(tok2), tok2.eos_token_id, text.get("llama", {}), text.get("clip", {}), int(text.get("seed", 0))
    )
    vae = AutoencoderKLHunyuanVideo.from_pretrained(cfg.vae) if cfg.vae else AutoencoderKLHunyuanVideo(**cfg.vae_init)
    torch.manual_seed(int(text.get("seed", 0)))
    transformer = HunyuanVideoTransformer3DModel(**cfg.transformer)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.shift)
    return HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=clip,
        tokenizer_2=tok2,
    )


@register
class FlowMatchingMethod(Method):
    """Teacher pre-training: MSE between predicted and true velocity at shifted-uniform noise levels."""

    uses_optim_lr = True
    name = "flow_matching"
    config_class = FlowMatchingConfig

    def __init__(self, cfg: FlowMatchingConfig, train, device) -> None:
        super().__init__(cfg, train, device)
        if cfg.base:
            self.pipe = HunyuanVideoPipeline.from_pretrained(cfg.base, dtype=torch.float32)
            if cfg.transformer:
                self.pipe.transformer = HunyuanVideoTransformer3DModel(**cfg.transformer)
        else:
            self.pipe = build_embedded_pipeline(cfg)
        self.pipe.to(device)
        self.backbone = backbone_for(self.pipe)
        self.transformer = self.pipe.transformer
        self.transformer.requires_grad_(True)
        self.objective = FlowMatchingLoss(NoiseLevels(cfg.shift))
        self.ema = EMA(list(self.transformer.named_parameters()), cfg.ema_decay) if cfg.ema_decay > 0 else None
        for m in (self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2):
            m.requires_grad_(False).eval()
        d = train.data
        data = PortraitDataset("train", seed=d.seed, num_frames=d.num_frames, size=d.size)
        self.cache = latent_cache.load_or_build(self.backbone, data, cfg.cache_clips, cfg.cache_dir)

    # ---- training ---------------------------------------------------------------------------
    def param_groups(self):
        return {"transformer": (list(self.transformer.parameters()), self.train_cfg.optim.learning_rate)}

    def batch(self, step: int) -> dict:
        rng = np.random.default_rng([self.train_cfg.seed, step, 0xF10])
        idx = rng.integers(len(self.cache["latents"]), size=self.train_cfg.batch_size)
        drop = rng.random(len(idx)) < self.cfg.caption_dropout
        x0, cond = latent_cache.cache_batch(self.cache, idx, drop, self.device, self.shard)
        return {"x0": x0, "cond": cond, "noise": self.step_noise(step)}

    def loss(self, phase, batch):
        cond, rng = batch["cond"], batch["noise"].stream(phase)
        return self.objective(lambda x, s: self.backbone.velocity(x, s, cond), batch["x0"], rng), {}

    def after_step(self, phase: str) -> None:
        if self.ema is not None:
            self.ema.update()

    def trainable_state(self):
        state = dict(self.transformer.state_dict())
        if self.ema is not None:
            state.update({f"ema::{k}": v for k, v in self.ema.state_dict().items()})
        return state

    def load_trainable_state(self, state):
        self.transformer.load_state_dict({k: v for k, v in state.items() if not k.startswith("ema::")})
        if self.ema is not None:
            self.ema.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("ema::")})

    def train(self, mode: bool = True) -> None:
        self.transformer.train(mode)

    # ---- validation and export --------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], steps: int) -> torch.Tensor:
        """Euler samples decoded to video in [-1, 1], (B, 3, F, H, W)."""
        d = self.train_cfg.data
        cond = self.backbone.encode_prompts(prompts)
        shape = self.backbone.latent_shape(d.num_frames, d.size, d.size)
        noise = seeded_noise(shape, seeds)
        sigmas = get_sigmas(steps, self.cfg.shift)
        lat = sample_euler(lambda x, s: self.backbone.velocity(x, s, cond), noise.to(self.device), sigmas)
        return self.backbone.decode_latents(lat)

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        from w2svd.methods.validation import write_validation_grid

        with averaged(self.ema):
            sample = functools.partial(self.sample, steps=self.cfg.val_steps)
            write_validation_grid(sample, self.cfg.val_prompts, step, out_dir)
        return {}

    def export(self, out_dir: Path, write: bool = True) -> None:
        """A complete diffusers folder at <out_dir>/pipeline with generation defaults and a model card."""
        if not write:  # another process of a data-parallel run: the main one writes
            return
        from w2svd.cards import base_card

        folder = out_dir / "pipeline"
        with averaged(self.ema):
            self.pipe.to(getattr(torch, self.cfg.export_dtype))
            try:
                self.pipe.save_pretrained(folder)
            finally:
                self.pipe.to(torch.float32)
        d = self.train_cfg.data
        defaults = {
            "height": d.size,
            "width": d.size,
            "num_frames": d.num_frames,
            "fps": 8,
            "num_inference_steps": 28,
            "guidance_scale": 1.0,
            "flow_shift": self.cfg.shift,
            **self.cfg.generation,
        }
        (folder / "generation_defaults.json").write_text(json.dumps(defaults, indent=1))
        components = {k: type(v).__name__ for k, v in self.pipe.components.items() if v is not None}
        report: dict[str, Any] = {
            "transformer_parameters": sum(p.numel() for p in self.transformer.parameters()),
            "training_clips_cached": self.cfg.cache_clips,
            "training_config": "training/configs/embedded_teacher.yaml",
        }
        vae_report = Path(self.cfg.vae).parent / "vae_report.json" if self.cfg.vae else None
        if vae_report is not None and vae_report.is_file():
            report["vae"] = json.loads(vae_report.read_text())
        (folder / "README.md").write_text(base_card(defaults, components, report))
