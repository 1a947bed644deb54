"""Losses and noise draws shared by the training methods: flow matching, consistency (LCM); per-sample noise.

The distribution-matching loss of W2SVD / DMD lives with the rest of the algorithm in ``w2svd.algorithm``.

Rectified-flow notation: x_s = (1 - s) * x0 + s * eps, v = eps - x0, x0_hat = x_s - s * v.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from w2svd.sampling import noised, shift_sigmas

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_s, s of shape (B,)) -> v


class TorchNoise:
    """Draws from torch's global generator (the losses used on their own)."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(x)

    def rand(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device)


class SampleNoise:
    """Draws for rows ``rows`` of a training step's global batch, each row from its own generator.

    Row i's generator is seeded by (seed, step, i, stream), so what a sample draws does not depend on which
    process holds it or on how many rows a process holds: N processes with B / N rows each draw exactly
    what one process with B rows draws. ``stream(name)`` gives fresh generators for another use in the step.
    """

    def __init__(self, seed: int, step: int, rows: Sequence[int], device: torch.device, stream: str = "") -> None:
        self.seed, self.step, self.rows, self.device = seed, step, list(rows), torch.device(device)
        key = zlib.crc32(stream.encode())
        seeds = [int(np.random.SeedSequence([seed, step, i, key]).generate_state(1, np.uint64)[0]) for i in self.rows]
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]

    def stream(self, name: str) -> SampleNoise:
        return SampleNoise(self.seed, self.step, self.rows, self.device, name)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``x`` (B, ...), row b from generator b."""
        if x.shape[0] != len(self.generators):
            raise ValueError(f"x has {x.shape[0]} rows but this noise source holds {len(self.generators)}")
        return torch.stack(
            [torch.randn(x.shape[1:], generator=g, device=self.device, dtype=x.dtype) for g in self.generators]
        ).to(x.device)

    def rand(self, n: int, device: torch.device) -> torch.Tensor:
        """(n,) uniform [0, 1) values, one per row."""
        if n != len(self.generators):
            raise ValueError(f"asked for {n} values but this noise source holds {len(self.generators)} rows")
        return torch.cat([torch.rand(1, generator=g, device=self.device) for g in self.generators]).to(device)


class NoiseLevels:
    """Draws noise levels s in [s_min, s_max], uniform then time-shifted like the base sampler."""

    def __init__(self, shift: float = 1.0, s_min: float = 0.0, s_max: float = 1.0) -> None:
        if not 0 <= s_min < s_max <= 1:
            raise ValueError(f"need 0 <= s_min < s_max <= 1, got s_min={s_min}, s_max={s_max}")
        self.shift, self.s_min, self.s_max = shift, s_min, s_max

    def __call__(self, n: int, device: torch.device, rng: TorchNoise | SampleNoise | None = None) -> torch.Tensor:
        u = (rng or TorchNoise()).rand(n, device) * (self.s_max - self.s_min) + self.s_min
        return shift_sigmas(u, self.shift)


class FlowMatchingLoss:
    """Mean squared error between the predicted velocity and eps - x0 (teacher and fake-score training)."""

    def __init__(self, levels: NoiseLevels) -> None:
        self.levels = levels

    def __call__(
        self, velocity: VelocityFn, x0: torch.Tensor, rng: TorchNoise | SampleNoise | None = None
    ) -> torch.Tensor:
        rng = rng or TorchNoise()
        eps = rng.randn_like(x0)
        s = self.levels(x0.shape[0], x0.device, rng)
        return F.mse_loss(velocity(noised(x0, eps, s), s), eps - x0)


def consistency_target(
    teacher_velocity: VelocityFn,
    target_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_hi: torch.Tensor,
    s_hi: torch.Tensor,
    s_lo: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's target, without gradient: one teacher Euler step x_hi -> x_lo, then the target network's f(x_lo, s_lo).

    ``target_x0(x, s)`` is the target consistency function (an x0 prediction); s_hi, s_lo have shape (B,).
    Returns (x_lo, target).
    """
    with torch.no_grad():
        x_lo = x_hi + (s_lo - s_hi).view(-1, *([1] * (x_hi.dim() - 1))) * teacher_velocity(x_hi, s_hi)
        return x_lo, target_x0(x_lo, s_lo)


def consistency_distance(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", huber_c: float = 1e-3
) -> torch.Tensor:
    """Mean pseudo-Huber sqrt(d^2 + c^2) - c (LCM's choice) or mean squared error between pred and target."""
    if kind == "huber":
        return (torch.sqrt((pred.float() - target.float()) ** 2 + huber_c**2) - huber_c).mean()
    if kind == "l2":
        return F.mse_loss(pred.float(), target.float())
    raise ValueError(f"kind={kind!r} must be 'huber' or 'l2'")
