"""Losses shared by the training methods: flow matching, (weak-to-strong) distribution matching, consistency.

Rectified-flow notation: x_s = (1 - s) * x0 + s * eps, v = eps - x0, x0_hat = x_s - s * v.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from w2svd.sampling import shift_sigmas

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_s, s of shape (B,)) -> v


def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (x.dim() - 1)))


class NoiseLevels:
    """Draws noise levels s in [s_min, s_max], uniform then time-shifted like the base sampler."""

    def __init__(self, shift: float = 1.0, s_min: float = 0.0, s_max: float = 1.0) -> None:
        if not 0 <= s_min < s_max <= 1:
            raise ValueError(f"need 0 <= s_min < s_max <= 1, got s_min={s_min}, s_max={s_max}")
        self.shift, self.s_min, self.s_max = shift, s_min, s_max

    def __call__(self, n: int, device: torch.device) -> torch.Tensor:
        u = torch.rand(n, device=device) * (self.s_max - self.s_min) + self.s_min
        return shift_sigmas(u, self.shift)


class FlowMatchingLoss:
    """Mean squared error between the predicted velocity and eps - x0 (teacher and fake-score training)."""

    def __init__(self, levels: NoiseLevels) -> None:
        self.levels = levels

    def __call__(self, velocity: VelocityFn, x0: torch.Tensor) -> torch.Tensor:
        eps = torch.randn_like(x0)
        s = self.levels(x0.shape[0], x0.device)
        x = (1 - _bcast(s, x0)) * x0 + _bcast(s, x0) * eps
        return F.mse_loss(velocity(x, s), eps - x0)


class DistributionMatchingLoss:
    """DMD's generator loss: move x0_hat along (x0_fake - x0_real), normalised as in DMD2.

    ``normalizer="per_sample"`` divides by mean|x0_hat - x0_real| of each sample (DMD2);
    ``"global"`` by the batch mean (FastVideo). The loss is 0.5 * ||x0_hat - sg(x0_hat - grad)||^2,
    whose gradient with respect to x0_hat is ``grad`` (divided by the element count).
    """

    def __init__(self, levels: NoiseLevels, normalizer: str = "per_sample") -> None:
        if normalizer not in ("per_sample", "global"):
            raise ValueError(f"normalizer={normalizer!r} must be 'per_sample' or 'global'")
        self.levels, self.normalizer = levels, normalizer

    def __call__(
        self, x0_hat: torch.Tensor, real_velocity: VelocityFn, fake_velocity: VelocityFn
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = x0_hat.detach()
        s = self.levels(x0.shape[0], x0.device)
        eps = torch.randn_like(x0)
        sb = _bcast(s, x0)
        x_s = (1 - sb) * x0 + sb * eps
        with torch.no_grad():
            x0_real = x_s - sb * real_velocity(x_s, s)
            x0_fake = x_s - sb * fake_velocity(x_s, s)
            dims = tuple(range(1, x0.dim()))
            if self.normalizer == "per_sample":
                norm = (x0 - x0_real).abs().mean(dim=dims, keepdim=True)
            else:
                norm = (x0 - x0_real).abs().mean()
            grad = torch.nan_to_num((x0_fake - x0_real) / norm.clamp_min(1e-6))
        loss = 0.5 * F.mse_loss(x0_hat, (x0_hat - grad).detach())
        terms = {
            "dm/grad_norm": float(grad.flatten(1).norm(dim=1).mean()),
            "dm/real_fake_gap": float((x0_fake - x0_real).abs().mean()),
        }
        return loss, terms


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
        x_lo = x_hi + _bcast(s_lo - s_hi, x_hi) * teacher_velocity(x_hi, s_hi)
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
