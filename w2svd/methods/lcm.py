"""LCM baseline: latent consistency distillation of the flow-matching base into a generator LoRA.

Consistency function f(x, s) = x - s * v_student(x, s), so f(x, 0) = x. Per step: noise real latents to
s_hi = sigmas[n] on the teacher's grid, take one Euler step of the base alone (adapter scale 0) to
s_lo = sigmas[n + skip], and pull f_student(x_hi, s_hi) toward sg(f_target(x_lo, s_lo)). The target is
a second LoRA adapter ("target") holding the EMA of the student; ema_decay = 0 uses the online student
without gradient, as diffusers' LCM-LoRA example does. The student samples with ``sample_renoise``
(predict x0, re-noise to the next sigma), so its LoRA runs in ``VideoGenerator.few_step`` unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2svd.algorithm import guided, noised
from w2svd.backbones import Cond, backbone_for
from w2svd.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, ConfigError, check_values
from w2svd.data import PortraitDataset, latent_cache
from w2svd.generator_meta import GeneratorMeta
from w2svd.lora import lora_config, save_lora
from w2svd.losses import consistency_distance, consistency_target
from w2svd.methods.base import Method, register
from w2svd.methods.roles import GENERATOR, LoraAdapters
from w2svd.methods.teacher import load_teacher
from w2svd.methods.validation import few_step_videos, validation_metrics, write_validation_grid
from w2svd.sampling import get_sigmas

log = logging.getLogger(__name__)
TARGET = "target"


@dataclasses.dataclass
class LCMConfig:
    base: str = "embedded"  # teacher pipeline: 'embedded', a folder, or a Hub id
    random_base: dict[str, Any] = dataclasses.field(default_factory=dict)  # {vae_init, text, transformer}: tests
    steps: list[int] = dataclasses.field(default_factory=lambda: [4, 1, 2, 8])  # exported step counts; first: default
    teacher_steps: int = 28  # the teacher's discretisation get_sigmas(teacher_steps, teacher_shift)
    teacher_shift: float = 3.0  # the base's flow shift
    skip: int = 1  # teacher grid steps per ODE step (LCM's k): s_lo = sigmas[n + skip]
    teacher_cfg_scale: float = 1.0  # true CFG of the teacher step against the empty prompt; 1 = off
    rank: int = 16
    lora_alpha: float = 16.0
    lr: float = 1e-4
    loss: str = "huber"  # huber (LCM's pseudo-Huber) | l2
    huber_c: float = 1e-3
    ema_decay: float = 0.95  # target = EMA of the student LoRA; 0 = the online student with stop-gradient
    cache_dir: str = "runs/cache"
    cache_clips: int = 12000
    val_prompts: int = 8
    val_metrics_n: int = 0  # held-out pairs scored at each validation (FD, adherence); needs 9 frames of 64x64

    def validate(self) -> None:
        check_values(
            self, "method", rank=AT_LEAST_ONE, lora_alpha=POSITIVE, lr=POSITIVE, teacher_shift=POSITIVE,
            huber_c=POSITIVE, cache_clips=AT_LEAST_ONE, val_prompts=NON_NEGATIVE,
        )  # fmt: skip
        if self.teacher_steps < 1 or not 1 <= self.skip <= self.teacher_steps:
            raise ConfigError(
                f"method.teacher_steps={self.teacher_steps}, method.skip={self.skip}: need 1 <= skip <= teacher_steps"
            )
        if not self.steps or any(not 1 <= n <= self.teacher_steps for n in self.steps):
            raise ConfigError(
                f"method.steps={self.steps} must be a non-empty list of step counts in [1, teacher_steps="
                f"{self.teacher_steps}]"
            )
        for n in self.steps:
            if max(sampling_indices(n, self.teacher_steps)) > self.teacher_steps - self.skip:
                raise ConfigError(
                    f"method.steps contains {n}: its sigmas leave the trained part of the teacher grid "
                    f"(teacher_steps={self.teacher_steps}, skip={self.skip}); use fewer steps or a smaller skip"
                )
        if self.loss not in ("huber", "l2"):
            raise ConfigError(f"method.loss={self.loss!r} must be 'huber' or 'l2'")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"method.ema_decay={self.ema_decay} must be in [0, 1) (0: online student target)")


def sampling_indices(steps: int, teacher_steps: int) -> list[int]:
    """Evenly spaced indices into the teacher grid for a ``steps``-step sampler (LCM's skipping schedule)."""
    return sorted({round(i * teacher_steps / steps) for i in range(steps)})


@register
class LCMMethod(Method):
    """Consistency distillation of the frozen base into a generator LoRA, the target an EMA LoRA beside it."""

    name = "lcm"
    config_class = LCMConfig

    def __init__(self, cfg: LCMConfig, train, device) -> None:
        super().__init__(cfg, train, device)
        self.pipe, self.base_name = load_teacher(cfg, device)
        self.backbone = backbone_for(self.pipe)
        self.transformer = self.pipe.transformer
        names = [GENERATOR, TARGET] if cfg.ema_decay else [GENERATOR]
        regex = self.backbone.lora_target_regex
        self.adapters = LoraAdapters(self.transformer, {a: lora_config(cfg.rank, cfg.lora_alpha, regex) for a in names})
        self.pairs = self._target_pairs()
        with torch.no_grad():  # the target starts as the student
            for student, target in self.pairs:
                target.copy_(student)
        self.teacher_sigmas = get_sigmas(cfg.teacher_steps, cfg.teacher_shift)  # (N + 1,), ends in 0
        self.sigmas_by_steps = {
            n: torch.cat([self.teacher_sigmas[sampling_indices(n, cfg.teacher_steps)], torch.zeros(1)])
            for n in cfg.steps
        }
        self.sigmas = self.sigmas_by_steps[cfg.steps[0]]
        d = train.data
        data = PortraitDataset("train", seed=d.seed, num_frames=d.num_frames, size=d.size)
        self.cache = latent_cache.load_or_build(self.backbone, data, cfg.cache_clips, cfg.cache_dir)
        self.generator_updates = 0

    def _target_pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        if not self.cfg.ema_decay:
            return []
        target = dict(self.adapters.named(TARGET))
        return [(p, target[n.replace(f".{GENERATOR}.", f".{TARGET}.")]) for n, p in self.adapters.named(GENERATOR)]

    # ---- the three networks ----------------------------------------------------------------------
    def velocity(self, adapter: str, scale: float, x: torch.Tensor, s: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.adapters.use(adapter, scale)
        return self.backbone.velocity(x, s, cond)

    def teacher_velocity(self, cond: Cond, uncond: Cond | None):
        """The base alone (student adapter at scale 0), with optional true CFG."""

        def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return self.velocity(GENERATOR, 0.0, x, s, cond)

        def fn_uncond(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return self.velocity(GENERATOR, 0.0, x, s, uncond)

        return guided(fn, None if uncond is None else fn_uncond, self.cfg.teacher_cfg_scale)

    def x0_fn(self, cond: Cond, adapter: str):
        """The consistency function f(x, s) = x - s * v(x, s) of ``adapter``."""

        def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return x - s.view(-1, *[1] * (x.dim() - 1)) * self.velocity(adapter, 1.0, x, s, cond)

        return fn

    # ---- the Method interface ------------------------------------------------------------------
    def arm(self, phase: str) -> None:
        super().arm(phase)
        self.adapters.use(GENERATOR)  # what gradient checkpointing would recompute

    def param_groups(self):
        return {GENERATOR: (self.adapters.params[GENERATOR], self.cfg.lr)}

    def batch(self, step: int) -> dict:
        rng = np.random.default_rng([self.train_cfg.seed, step, 0x1C3])
        idx = rng.integers(len(self.cache["latents"]), size=self.train_cfg.batch_size)
        n = rng.integers(0, self.cfg.teacher_steps - self.cfg.skip + 1, size=len(idx))  # per-sample grid index
        x0, cond = latent_cache.cache_batch(self.cache, idx, None, self.device, self.shard)
        uncond = None
        if self.cfg.teacher_cfg_scale != 1.0:
            _, uncond = latent_cache.cache_batch(self.cache, idx, np.ones(len(idx), bool), self.device, self.shard)
        n_t = torch.from_numpy(n[self.shard])
        s_hi = self.teacher_sigmas[n_t].to(self.device)
        s_lo = self.teacher_sigmas[n_t + self.cfg.skip].to(self.device)
        noise = self.step_noise(step)
        return {"x0": x0, "cond": cond, "uncond": uncond, "s_hi": s_hi, "s_lo": s_lo, "noise": noise}

    def loss(self, phase: str, batch: dict):
        x0, cond, s_hi, s_lo = batch["x0"], batch["cond"], batch["s_hi"], batch["s_lo"]
        x_hi = noised(x0, batch["noise"].stream(phase).randn_like(x0), s_hi)  # (B, C, F, H, W)
        target_adapter = TARGET if self.cfg.ema_decay else GENERATOR
        x_lo, target = consistency_target(
            self.teacher_velocity(cond, batch["uncond"]), self.x0_fn(cond, target_adapter), x_hi, s_hi, s_lo
        )
        pred = self.x0_fn(cond, GENERATOR)(x_hi, s_hi)
        loss = consistency_distance(pred, target, self.cfg.loss, self.cfg.huber_c)
        terms = {
            "lcm/teacher_step": float((x_lo - x_hi).abs().mean()),
            "lcm/target_gap": float((pred.detach() - target).abs().mean()),
        }
        return loss, terms

    @torch.no_grad()
    def after_step(self, phase: str) -> None:
        """target <- decay * target + (1 - decay) * student, after every student update."""
        self.generator_updates += 1
        for student, target in self.pairs:
            target.lerp_(student, 1.0 - self.cfg.ema_decay)

    def trainable_state(self):
        state = {n: p.detach() for a in self.adapters.params for n, p in self.adapters.named(a)}
        state["generator_updates"] = torch.tensor(self.generator_updates)
        return state

    def load_trainable_state(self, state):
        named = dict(self.transformer.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                if n == "generator_updates":
                    self.generator_updates = int(t)
                else:
                    named[n].copy_(t)

    def train(self, mode: bool = True) -> None:
        self.transformer.train(mode)

    # ---- sampling, validation, export ---------------------------------------------------------
    def sample(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Multistep consistency samples (``sample_renoise``) decoded to video in [-1, 1]."""

        def velocity_for(cond: Cond):
            return lambda x, s: self.velocity(GENERATOR, 1.0, x, s, cond)

        d = self.train_cfg.data
        return few_step_videos(self.backbone, velocity_for, self.sigmas, d, prompts, seeds, self.device)

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        write_validation_grid(self.sample, self.cfg.val_prompts, step, out_dir)
        scores = {}
        if self.cfg.val_metrics_n:
            scores = validation_metrics(self.sample, self.cfg.val_metrics_n, step, out_dir, self.generator_updates)
        return scores

    def generator_meta(self) -> GeneratorMeta:
        c = self.cfg
        return GeneratorMeta(
            sigmas_by_steps={str(n): [round(float(s), 6) for s in sig] for n, sig in self.sigmas_by_steps.items()},
            default_steps=c.steps[0],
            guidance_scale=1.0,
            renoise=True,
            base_model=self.base_name,
            pipeline=type(self.pipe).__name__,
            method="lcm",
            training_steps=self.generator_updates,
            training={
                "teacher_steps": c.teacher_steps,
                "teacher_shift": c.teacher_shift,
                "skip": c.skip,
                "teacher_cfg_scale": c.teacher_cfg_scale,
                "loss": c.loss,
                "ema_decay": c.ema_decay,
            },
        )

    def export(self, out_dir: Path, write: bool = True) -> None:
        """The student LoRA in diffusers format (the same file layout and metadata keys as W2SVD's)."""
        if not write:  # another process of a data-parallel run: the main one writes
            return
        save_lora(self.transformer, GENERATOR, out_dir, self.generator_meta(), type(self.pipe))
        log.info("exported %s", self.generator_meta().to_json())
