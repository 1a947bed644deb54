"""Rectified-flow sampling as pure functions: schedules are built separately, the model is a callable.

Notation (HunyuanVideo's): x_s = (1 - s) * x0 + s * eps, the model predicts v = eps - x0, so
x0_hat = x_s - s * v. ``model_fn(x, sigma) -> v`` with sigma a float in (0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], None]


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time shift: s' = shift * s / (1 + (shift - 1) * s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def get_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Shifted uniform schedule with a trailing 0, as diffusers' FlowMatchEulerDiscreteScheduler builds it."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigmas(s, shift), torch.zeros(1, dtype=torch.float64)]).float()


def x0_from_v(x: torch.Tensor, sigma: float | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x - sigma * v


def sample_euler(model_fn: ModelFn, noise: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None):
    """Deterministic Euler ODE sampling over ``sigmas`` (descending, ending in 0)."""
    x = noise
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, s)
        x = x + (s_next - s) * v
        if callback is not None:
            callback(i, s, x)
    return x


def sample_renoise(
    model_fn: ModelFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
):
    """Few-step sampling that predicts x0 at each sigma and re-noises it to the next one (DMD2 style).

    Matches diffusers' FlowMatchEulerDiscreteScheduler with ``stochastic_sampling=True``.
    """
    x = noise
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = x0_from_v(x, s, model_fn(x, s))
        if s_next > 0:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (1 - s_next) * x0 + s_next * eps
        else:
            x = x0
        if callback is not None:
            callback(i, s, x)
    return x
