"""The one training config: shared loop settings plus a ``method`` section chosen by name."""

from __future__ import annotations

import dataclasses
from typing import Any

from w2svd.config import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, POSITIVE, UNIT, ConfigError, check_values

DEFAULT_LR = 1e-4


@dataclasses.dataclass
class OptimConfig:
    # learning rate of the single-optimiser methods (vae, flow_matching, features); None: DEFAULT_LR. The distillation
    # methods and LCM take theirs from the method section (generator_lr / fake_lr, lr) and refuse this one
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR if self.lr is None else self.lr

    def validate(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule={self.schedule!r} must be 'constant' or 'cosine'")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        check_values(
            self, "optim", eps=POSITIVE, weight_decay=NON_NEGATIVE, grad_clip=NON_NEGATIVE,
            warmup_steps=NON_NEGATIVE, min_lr_ratio=UNIT,
        )  # fmt: skip
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must both be in [0, 1)")


@dataclasses.dataclass
class DataConfig:
    num_frames: int = 9
    size: int = 64  # side of the (square) synthetic portrait clips
    seed: int = 0  # dataset seed (which clips); the run seed drives batch order and noise
    height: int | None = None  # clip height where a method supports non-square clips (w2svd); None: size
    width: int | None = None  # clip width; None: size

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the clips: ``height``/``width``, each defaulting to ``size``."""
        return (self.height or self.size, self.width or self.size)

    def validate(self) -> None:
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ConfigError(f"data.num_frames={self.num_frames} must be 4k+1 (1, 5, 9, ...)")
        for key in ("size", "height", "width"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key}={value} must be >= 1 (height/width: omit or null to use data.size)")


@dataclasses.dataclass
class TrainConfig:
    method: dict[str, Any]  # {name: <registered method>, ...that method's fields}
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 16  # global: each of N processes (accelerate launch --num_processes N) takes batch_size / N
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2
    log_every: int = 10
    validate_every: int = 0  # 0: only at the end
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    skip_nonfinite: bool = False  # skip (and count) a phase update whose loss is NaN/inf instead of stopping;
    # the run still stops with NonFiniteLossError after more than 10 consecutive steps with a skip
    sharding: str = "none"  # none | fsdp: with N > 1 processes, shard the method's transformers (FSDP2) instead
    # of replicating them; an accelerate config with distributed_type FSDP selects fsdp too (w2svd.training.sharding)
    dist_timeout_s: float = 1800.0  # multi-process: how long a process waits for the others (e.g. for rank 0's
    # validation or latent cache) before failing instead of hanging
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def validate(self) -> None:
        if "name" not in self.method:
            raise ConfigError("config.method needs a 'name' (e.g. method: {name: vae})")
        if not isinstance(self.method["name"], str):
            raise ConfigError(f"config.method.name={self.method['name']!r} must be a method name, e.g. vae")
        check_values(
            self, "config", max_steps=AT_LEAST_ONE, batch_size=AT_LEAST_ONE, checkpoint_every=AT_LEAST_ONE,
            log_every=AT_LEAST_ONE, validate_every=NON_NEGATIVE, threads=NON_NEGATIVE, output_dir=NON_EMPTY,
        )  # fmt: skip
        if self.checkpoints_total_limit < 1:
            raise ConfigError(f"config.checkpoints_total_limit={self.checkpoints_total_limit} must be >= 1")
        if self.dist_timeout_s <= 0:
            raise ConfigError(f"config.dist_timeout_s={self.dist_timeout_s} must be > 0 (seconds)")
        if self.sharding not in ("none", "fsdp"):
            raise ConfigError(f"config.sharding={self.sharding!r} must be 'none' or 'fsdp'")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"config.mixed_precision={self.mixed_precision!r} must be 'no', 'bf16' or 'fp16'")
