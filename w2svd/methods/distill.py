"""W2SVD: weak-to-strong distribution-matching distillation with two LoRAs on one frozen backbone.

generator  = backbone + generator LoRA (scale 1), sampled on a fixed few-step sigma list
fake score = backbone + fake-score LoRA (scale 1)
real score = backbone + alpha_weak * fake-score LoRA, no gradient (alpha_weak = 0: vanilla DMD)

``method.roles=copies`` instead trains full generator and fake-score copies of the transformer beside
the frozen teacher (DMD2 / FastVideo), for the memory comparison and as a baseline (see roles.py).
Our reading of arXiv 2503.13319 (see README): the paper's equations were not available to us.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2svd.algorithm import (
    distribution_matching_loss,
    fake_score_loss,
    guided,
    noised,
    rollout,
    temporal_teacher_loss,
    x0_from_v,
)
from w2svd.backbones import Cond, backbone_for
from w2svd.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, ConfigError, check_values
from w2svd.data import PortraitDataset, latent_cache
from w2svd.generator_meta import GeneratorMeta
from w2svd.losses import FlowMatchingLoss, NoiseLevels, SampleNoise
from w2svd.methods.base import Method, register
from w2svd.methods.discriminator import DiscriminatorHead, FeatureTap, discriminator_loss, generator_gan_loss
from w2svd.methods.roles import FAKE, GENERATOR, REAL, ROLES
from w2svd.methods.teacher import load_teacher
from w2svd.methods.validation import few_step_videos, validation_metrics, write_validation_grid
from w2svd.pipeline import MAX_CFG_SCALE
from w2svd.sampling import get_sigmas
from w2svd.training import sharding
from w2svd.training.ema import EMA, averaged

log = logging.getLogger(__name__)
__all__ = ["FAKE", "GENERATOR", "REAL", "DistillConfig", "DistillMethod"]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # method.dtype


@dataclasses.dataclass
class DistillConfig:
    base: str = "embedded"  # teacher pipeline: 'embedded', a folder, or a Hub id
    random_base: dict[str, Any] = dataclasses.field(default_factory=dict)  # {vae_init, text, transformer}: tests
    roles: str = "lora"  # lora: two LoRAs on one frozen backbone | copies: full generator and fake copies (DMD2)
    steps: int = 4  # generator sampling steps
    generator_shift: float = 5.0  # the step list is get_sigmas(steps, generator_shift)
    alpha_weak: float = 0.25  # real score = backbone + alpha_weak * fake LoRA
    lambda_gt: float = 0.5  # weight of the fake score's flow-matching loss on ground-truth latents
    fake_updates_per_generator_update: int = 5
    generator_rank: int = 16
    generator_lora_alpha: float = 16.0
    fake_rank: int = 16
    fake_lora_alpha: float = 16.0
    generator_lr: float = 5e-5
    fake_lr: float = 2e-4
    dm_normalizer: str = "per_sample"  # per_sample (DMD2) | global (FastVideo)
    dm_s_min: float = 0.02
    dm_s_max: float = 0.98
    noise_shift: float = 3.0  # shift of the noise levels drawn for DM and fake-score losses (the base's)
    real_cfg_scale: float = 1.0  # true CFG on the real score (empty prompt); 1 = off. Match the base's true_cfg_scale
    # the noise levels [lo, hi] of the distribution-matching loss at which real_cfg_scale applies (elsewhere the
    # real score is unguided): a guidance interval; [0, 1] guides at every level
    real_cfg_levels: tuple[float, float] = (0.0, 1.0)
    real_cfg_outside_scale: float = 1.0  # the real score's guidance outside real_cfg_levels (1 = unguided there)
    backward_simulation: bool = True  # else the generator is trained from pure noise at every step
    # the generator's sampler, in training's rollout and at inference: re-noise each x0 prediction with fresh noise
    # (DMD2; diffusers stochastic_sampling=True), or false: deterministic Euler steps (stochastic_sampling=False)
    renoise: bool = True
    ema_decay: float = 0.0  # EMA of the generator LoRA (0 = off); the export uses the EMA weights
    # weight of the temporal term (algorithm.temporal_teacher_loss; 0 = off): the generated x0's frame differences
    # pulled, at a level drawn uniformly in temporal_levels, toward the real score's re-denoised ones
    # (temporal_target "real": damps all motion, seventeenth sitting) or by the fake and real scores' gap ("score_gap")
    lambda_temporal: float = 0.0
    temporal_levels: tuple[float, float] = (0.1, 0.25)
    temporal_target: str = "real"
    discriminator: bool = False  # DMD2-style GAN head on the fake score's features (discriminator.py)
    gan_generator_weight: float = 5e-3  # weight of the generator's GAN loss (DMD2's SDXL setting)
    gan_discriminator_weight: float = 1e-2  # weight of the head's loss in the fake-score phase
    guidance: float = 1.0  # embedded guidance of every role's velocity (guidance_embeds models; 13B samples ~6)
    dtype: str = "float32"  # frozen pipeline weights: float32 | bfloat16 | float16 (trained weights stay fp32)
    gradient_checkpointing: bool = False  # diffusers' per-block checkpointing of the trained transformer(s)
    prepared: str = ""  # training/prepare.py output folder (bucket data.height x data.width); "": portrait clips
    cache_dir: str = "runs/cache"  # synthetic portrait-world latent cache (when prepared is "")
    cache_clips: int = 12000
    val_prompts: int = 8
    val_metrics_n: int = 0  # held-out pairs scored at each validation (FD, adherence); needs 9 frames of 64x64

    @property
    def guides_real_score(self) -> bool:
        """Whether the real score is guided at some noise level (the batch then needs the empty-prompt condition)."""
        return self.real_cfg_scale != 1.0 or self.real_cfg_outside_scale != 1.0

    def validate(self) -> None:
        check_values(
            self, "method", generator_rank=AT_LEAST_ONE, fake_rank=AT_LEAST_ONE, generator_lora_alpha=POSITIVE,
            fake_lora_alpha=POSITIVE, generator_lr=POSITIVE, fake_lr=POSITIVE, generator_shift=POSITIVE,
            noise_shift=POSITIVE, cache_clips=AT_LEAST_ONE, val_prompts=NON_NEGATIVE, dm_s_min=UNIT, dm_s_max=UNIT,
            lambda_temporal=NON_NEGATIVE,
        )  # fmt: skip
        if self.dm_s_min >= self.dm_s_max:
            raise ConfigError(f"method.dm_s_min={self.dm_s_min} must be below method.dm_s_max={self.dm_s_max}")
        in_range = (lambda v: 1 <= v <= MAX_CFG_SCALE, f"in [1, {MAX_CFG_SCALE:g}]")
        check_values(self, "method", real_cfg_scale=in_range, real_cfg_outside_scale=in_range)
        lo, hi = self.real_cfg_levels
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(
                f"method.real_cfg_levels={list(self.real_cfg_levels)} must be two noise levels [lo, hi] with "
                "0 <= lo < hi <= 1 (for example [0.5, 1.0] guides the real score at high noise only; [0, 1] everywhere)"
            )
        if self.real_cfg_outside_scale != 1.0 and lo <= 0.0 and hi >= 1.0:
            raise ConfigError(
                f"method.real_cfg_outside_scale={self.real_cfg_outside_scale:g} has no effect: it applies outside "
                f"method.real_cfg_levels={list(self.real_cfg_levels)}, which covers every noise level; narrow the "
                "levels (for example [0.4, 0.75]) or leave real_cfg_outside_scale at 1"
            )
        if not 0.0 <= self.alpha_weak <= 1.0:
            raise ConfigError(f"method.alpha_weak={self.alpha_weak} must be in [0, 1] (0 is vanilla DMD)")
        if self.roles not in ROLES:
            raise ConfigError(f"method.roles={self.roles!r} must be one of {sorted(ROLES)}")
        if self.roles == "copies" and self.alpha_weak != 0:
            raise ConfigError(
                f"method.alpha_weak={self.alpha_weak} must be 0 with method.roles=copies: the real score is the "
                "frozen teacher copy, with no fake-score LoRA to shift it by; set method.alpha_weak=0 or use roles=lora"
            )
        if self.steps < 1:
            raise ConfigError(f"method.steps={self.steps} must be >= 1")
        if self.fake_updates_per_generator_update < 1:
            raise ConfigError("method.fake_updates_per_generator_update must be >= 1")
        if self.dm_normalizer not in ("per_sample", "global"):
            raise ConfigError(f"method.dm_normalizer={self.dm_normalizer!r} must be 'per_sample' or 'global'")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"method.ema_decay={self.ema_decay} must be in [0, 1)")
        if self.lambda_gt < 0:
            raise ConfigError(f"method.lambda_gt={self.lambda_gt} must be >= 0")
        if self.temporal_target not in ("real", "score_gap"):
            raise ConfigError(f"method.temporal_target={self.temporal_target!r} must be 'real' or 'score_gap'")
        t_lo, t_hi = self.temporal_levels
        if not 0.0 < t_lo < t_hi <= 1.0:
            raise ConfigError(
                f"method.temporal_levels={list(self.temporal_levels)} must be two noise levels [lo, hi] with "
                "0 < lo < hi <= 1 (for example [0.1, 0.25]: the fine detail the DM gradient barely sees)"
            )
        if self.gan_generator_weight < 0 or self.gan_discriminator_weight < 0:
            raise ConfigError("method.gan_generator_weight and method.gan_discriminator_weight must be >= 0")
        if self.val_metrics_n and self.val_metrics_n < 8:
            raise ConfigError(
                f"method.val_metrics_n={self.val_metrics_n}: use 0 (off) or >= 8 (256 recommended: 64-pair FDs "
                "move 24-44% between sets of pairs, docs/stability.md)"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"method.dtype={self.dtype!r} must be one of {list(DTYPES)}")
        if self.guidance <= 0:
            raise ConfigError(f"method.guidance={self.guidance} must be > 0 (1.0 for a model without guidance embeds)")
        if self.gradient_checkpointing and self.discriminator and self.roles == "lora":
            raise ConfigError(
                "method.gradient_checkpointing with method.discriminator and roles=lora: the generator's GAN loss "
                "runs the fake-score LoRA in the generator's graph, and checkpointed blocks would be recomputed with "
                "the generator LoRA active; turn one of them off"
            )


@register
class DistillMethod(Method):
    """Generator, fake score and real score reached through ``roles``; the fake score is updated more often."""

    name = "w2svd"
    config_class = DistillConfig

    def __init__(self, cfg: DistillConfig, train, device) -> None:
        super().__init__(cfg, train, device)
        d = train.data
        if cfg.prepared:  # read (and checked) before the weights are loaded
            self.cache = latent_cache.from_prepared(cfg.prepared, *d.hw, d.num_frames)
        elif d.hw != (d.size, d.size):
            raise ConfigError(
                f"data.height x data.width = {d.hw[0]}x{d.hw[1]} needs method.prepared (real clips): the synthetic "
                f"portrait clips are square, data.size={d.size}"
            )
        self.pipe, self.base_name = load_teacher(cfg, device, DTYPES[cfg.dtype])
        self.backbone = backbone_for(self.pipe)
        if cfg.guidance != 1.0 and not self.backbone.guidance_embedded:
            raise ConfigError(
                f"method.guidance={cfg.guidance} has no effect: base {self.base_name!r} has no guidance embedding; "
                "set method.guidance=1.0"
            )
        self.transformer = self.pipe.transformer  # the shared backbone (lora) or the frozen teacher (copies)
        self.roles = ROLES[cfg.roles](self.backbone, cfg)
        self.params = self.roles.params
        if cfg.gradient_checkpointing:
            for role in (GENERATOR, FAKE):
                self.roles.transformer(role).enable_gradient_checkpointing()
        self.sigmas = get_sigmas(cfg.steps, cfg.generator_shift)
        self.fm_loss = FlowMatchingLoss(NoiseLevels(cfg.noise_shift))
        self.dm_levels = NoiseLevels(cfg.noise_shift, cfg.dm_s_min, cfg.dm_s_max)
        self.temporal_levels = NoiseLevels(1.0, *cfg.temporal_levels)  # uniform, not shifted
        if cfg.prepared:
            latent_cache.check_shape(self.cache, self.backbone.latent_shape(d.num_frames, *d.hw), cfg.prepared)
        else:
            data = PortraitDataset("train", seed=d.seed, num_frames=d.num_frames, size=d.size)
            self.cache = latent_cache.load_or_build(self.backbone, data, cfg.cache_clips, cfg.cache_dir)
        if cfg.lambda_temporal > 0 and self.backbone.latent_shape(d.num_frames, *d.hw)[1] < 2:
            raise ConfigError(
                f"method.lambda_temporal={cfg.lambda_temporal} needs >= 2 latent frames; data.num_frames="
                f"{d.num_frames} gives one: use more frames or method.lambda_temporal=0"
            )
        self.ema = EMA(self.roles.named(GENERATOR), cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.generator_updates = 0
        self.head, self.tap = None, None
        if cfg.discriminator:
            self.head = DiscriminatorHead(self.backbone.feature_dim()).to(device)
            self.tap = FeatureTap(self.backbone.feature_module(self.roles.transformer(FAKE)))

    # ---- the three roles ------------------------------------------------------------------------
    def arm(self, phase: str) -> None:
        super().arm(phase)
        self.roles.activate(phase)

    def score(self, role: str, cond: Cond, scale: float | None = None):
        """``role``'s velocity v(x_s, s) for ``cond`` (``scale`` overrides the LoRA scale, lora roles only)."""
        return self.roles.velocity_fn(role, cond, self.cfg.guidance, scale)

    def real_score(self, cond: Cond, uncond: Cond | None):
        """The weak-to-strong real score, guided against the empty prompt as the base samples (real_cfg_scale)."""
        v_uncond = None if uncond is None else self.score(REAL, uncond)
        c = self.cfg
        return guided(self.score(REAL, cond), v_uncond, c.real_cfg_scale, c.real_cfg_levels, c.real_cfg_outside_scale)

    def pick_step(self, step: int) -> int:
        """The rollout depth k of ``step``'s batch (backward simulation), one for the whole global batch."""
        if not self.cfg.backward_simulation:
            return 0
        return int(np.random.default_rng([self.train_cfg.seed, step, 0xB5]).integers(self.cfg.steps))

    # ---- the Method interface ------------------------------------------------------------------
    def param_groups(self):
        fake = self.params[FAKE] + (list(self.head.parameters()) if self.head is not None else [])
        return {FAKE: (fake, self.cfg.fake_lr), GENERATOR: (self.params[GENERATOR], self.cfg.generator_lr)}

    def logits(self, x0: torch.Tensor, cond: Cond, rng: SampleNoise) -> torch.Tensor:
        """Discriminator logits (B,) of clean latents x0, noised to a random level and seen by the fake score."""
        s = self.fm_loss.levels(x0.shape[0], x0.device, rng)
        return self.head(self.tap.run(self.score(FAKE, cond), noised(x0, rng.randn_like(x0), s), s))

    def phases(self, step: int) -> list[str]:
        r = self.cfg.fake_updates_per_generator_update
        return [FAKE, GENERATOR] if (step + 1) % r == 0 else [FAKE]

    def batch(self, step: int) -> dict:
        rng = np.random.default_rng([self.train_cfg.seed, step, 0xD15])
        idx = rng.integers(len(self.cache["latents"]), size=self.train_cfg.batch_size)
        x0_real, cond = latent_cache.cache_batch(self.cache, idx, None, self.device, self.shard)
        uncond = None
        if self.cfg.guides_real_score:
            _, uncond = latent_cache.cache_batch(self.cache, idx, np.ones(len(idx), bool), self.device, self.shard)
        k = self.pick_step(step)  # one rollout depth for the whole global batch
        return {"x0_real": x0_real, "cond": cond, "uncond": uncond, "k": k, "noise": self.step_noise(step)}

    def loss(self, phase: str, batch: dict):
        """The generator's distribution-matching loss, or the fake score's loss (w2svd.algorithm)."""
        cond, x0_real, k = batch["cond"], batch["x0_real"], batch["k"]
        rng = batch["noise"].stream(phase)  # the same draws for a sample whichever process holds it
        generator = self.score(GENERATOR, cond)
        x_k = rollout(generator, rng.randn_like(x0_real), self.sigmas, k, rng.randn_like, self.cfg.renoise)
        s_k = self.sigmas[k]
        if phase == GENERATOR:
            x0_hat = x0_from_v(x_k, s_k, generator(x_k, s_k))
            s = self.dm_levels(x0_hat.shape[0], x0_hat.device, rng)
            real = self.real_score(cond, batch["uncond"])
            loss, terms = distribution_matching_loss(
                x0_hat, real, self.score(FAKE, cond), s, rng.randn_like(x0_hat), self.cfg.dm_normalizer
            )
            if self.head is not None:  # gradient reaches x0_hat through the (not trained) fake score
                gan = generator_gan_loss(self.logits(x0_hat, cond, rng))
                loss = loss + self.cfg.gan_generator_weight * gan
                terms["gan/generator"] = gan.item()
            if self.cfg.lambda_temporal > 0:
                s_t = self.temporal_levels(x0_hat.shape[0], x0_hat.device, rng)
                fake = self.score(FAKE, cond) if self.cfg.temporal_target == "score_gap" else None
                temporal, t_terms = temporal_teacher_loss(x0_hat, real, s_t, rng.randn_like(x0_hat), fake)
                loss = loss + self.cfg.lambda_temporal * temporal
                terms.update(t_terms)
            return loss, terms
        with torch.no_grad():
            x0_gen = x0_from_v(x_k, s_k, generator(x_k, s_k))
        flow_matching = functools.partial(self.fm_loss, rng=rng)
        loss, terms = fake_score_loss(flow_matching, self.score(FAKE, cond), x0_gen, x0_real, self.cfg.lambda_gt)
        if self.head is not None:
            real_logits, gen_logits = self.logits(x0_real, cond, rng), self.logits(x0_gen, cond, rng)
            disc = discriminator_loss(real_logits, gen_logits)
            loss = loss + self.cfg.gan_discriminator_weight * disc
            terms["gan/discriminator"] = disc.item()
            terms["gan/accuracy"] = float(((real_logits > 0).float().mean() + (gen_logits < 0).float().mean()) / 2)
        return loss, terms

    def after_step(self, phase: str) -> None:
        """EMA of the generator after each generator update."""
        if phase != GENERATOR:
            return
        self.generator_updates += 1
        if self.ema is not None:
            self.ema.update()

    def trainable_state(self):
        state = {n: p.detach() for r in (GENERATOR, FAKE) for n, p in self.roles.named(r)}
        if self.head is not None:
            state.update({f"disc::{n}": p.detach() for n, p in self.head.named_parameters()})
        if self.ema is not None:
            state.update({f"ema::{n}": t for n, t in self.ema.state_dict().items()})
        state["generator_updates"] = torch.tensor(self.generator_updates)
        return state

    def load_trainable_state(self, state):
        named = dict(self.roles.named(GENERATOR) + self.roles.named(FAKE))
        with torch.no_grad():
            for n, t in state.items():
                if n == "generator_updates":
                    self.generator_updates = int(t)
                elif n.startswith("ema::"):
                    self.ema.shadow[n[5:]].copy_(t)
                elif n.startswith("disc::"):
                    dict(self.head.named_parameters())[n[6:]].copy_(t)
                else:
                    sharding.assign(named[n], t)  # full tensor into a (possibly sharded) parameter

    def sharded_modules(self) -> list[torch.nn.Module]:
        """The shared backbone (lora roles), or the teacher and both trained copies (copies roles)."""
        if self.ema is not None:
            raise ConfigError(
                f"method.ema_decay={self.cfg.ema_decay} is not supported with sharding=fsdp (the EMA keeps its own "
                "copy of the generator); set method.ema_decay=0 or sharding=none"
            )
        modules: list[torch.nn.Module] = []
        for role in (REAL, GENERATOR, FAKE):
            module = self.roles.transformer(role)
            if all(module is not m for m in modules):
                modules.append(module)
        return modules

    def rebind_parameters(self) -> None:
        self.roles.rebind_parameters()
        self.params = self.roles.params

    def train(self, mode: bool = True) -> None:
        self.roles.train(mode)
        if self.head is not None:
            self.head.train(mode)

    # ---- sampling, validation, export ---------------------------------------------------------
    def sample(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Few-step generator samples decoded to video in [-1, 1] (the same sampler the pipeline uses)."""
        d = self.train_cfg.data
        return few_step_videos(
            self.backbone,
            lambda c: self.score(GENERATOR, c),
            self.sigmas,
            d,
            prompts,
            seeds,
            self.device,
            renoise=self.cfg.renoise,
        )

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Grid and metrics of the exported generator: with EMA on, of the averaged weights, not the online ones."""
        scores = {}
        with averaged(self.ema):
            write_validation_grid(self.sample, self.cfg.val_prompts, step, out_dir)
            if self.cfg.val_metrics_n:
                scores = validation_metrics(self.sample, self.cfg.val_metrics_n, step, out_dir, self.generator_updates)
        return scores

    def generator_meta(self) -> GeneratorMeta:
        c = self.cfg
        return GeneratorMeta(
            sigmas_by_steps={str(c.steps): [round(float(s), 6) for s in self.sigmas]},
            default_steps=c.steps,
            guidance_scale=c.guidance,
            renoise=c.renoise,
            base_model=self.base_name,
            pipeline=type(self.pipe).__name__,
            method="w2svd" if (c.alpha_weak > 0 or c.lambda_gt > 0) else "dmd",
            real_cfg_scale=c.real_cfg_scale,  # the teacher's classifier-free guidance the generator learned
            training_steps=self.generator_updates,
            training={
                "roles": c.roles,
                "generator_shift": c.generator_shift,
                "alpha_weak": c.alpha_weak,
                "lambda_gt": c.lambda_gt,
                "fake_updates_per_generator_update": c.fake_updates_per_generator_update,
                "fake_score_updates": self.generator_updates * c.fake_updates_per_generator_update,
                "ema_decay": c.ema_decay,
                "discriminator": c.discriminator,
                **({"real_cfg_levels": list(c.real_cfg_levels)} if c.real_cfg_levels != (0.0, 1.0) else {}),
                **({"real_cfg_outside_scale": c.real_cfg_outside_scale} if c.real_cfg_outside_scale != 1.0 else {}),
                **(
                    {
                        "lambda_temporal": c.lambda_temporal,
                        "temporal_levels": list(c.temporal_levels),
                        "temporal_target": c.temporal_target,
                    }
                    if c.lambda_temporal > 0
                    else {}
                ),
            },
        )

    def export(self, out_dir: Path, write: bool = True) -> None:
        """The generator (EMA weights when ema_decay > 0): a diffusers LoRA, or a transformer folder (copies).

        Sharded: every process calls it and the one with ``write`` writes (see ``Roles.export``).
        """
        with averaged(self.ema), torch.no_grad():
            self.roles.export(out_dir, self.generator_meta(), type(self.pipe), write)
        if write:
            log.info("exported %s", self.generator_meta().to_json())
