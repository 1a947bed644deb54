"""Rectified-flow sampling as pure functions: schedules are built separately, the model is a callable.

Notation (HunyuanVideo's): x_s = (1 - s) * x0 + s * eps, the model predicts v = eps - x0, so
x0_hat = x_s - s * v. ``model_fn(x, sigma) -> v`` with sigma a float in (0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], None]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]  # x -> standard normal noise shaped like x (the re-noising draws)
RENOISE_SEED_OFFSET = 1  # a seed's re-noising generator is seeded with (seed + 1) mod 2**32


def seeded_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """(len(seeds), *shape) initial noise, each row from a CPU generator seeded with its seed (device-independent)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


class SeededRenoise:
    """Re-noising draws, one CPU generator per sample seeded with ``seed + RENOISE_SEED_OFFSET``.

    A sample's video then depends on its own seed only, never on its batch or its place in it, and no draw repeats
    the initial noise (training's backward simulation draws fresh noise too). Stock diffusers re-noises one video
    from the global RNG: ``torch.manual_seed(seed + 1)`` before the call reproduces it on the CPU.
    """

    def __init__(self, seeds: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed((int(s) + RENOISE_SEED_OFFSET) % 2**32) for s in seeds]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"x has {x.shape[0]} samples but the re-noising holds {len(self.generators)} seeds")
        eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in self.generators])
        return eps.to(device=x.device, dtype=x.dtype)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time shift: s' = shift * s / (1 + (shift - 1) * s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def get_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Shifted uniform schedule with a trailing 0, as diffusers' FlowMatchEulerDiscreteScheduler builds it."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigmas(s, shift), torch.zeros(1, dtype=torch.float64)]).float()


def _bcast(s: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """A per-sample level (B,) shaped to broadcast over x (B, ...); a float or 0-d tensor as it is."""
    return s.view(-1, *([1] * (x.dim() - 1))) if isinstance(s, torch.Tensor) and s.dim() == 1 else s


def noised(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """The flow-matching noising x_s = (1 - s) x0 + s eps; s a float, a 0-d tensor or one level per sample (B,)."""
    sb = _bcast(s, x0)
    return (1 - sb) * x0 + sb * eps


def x0_from_v(x: torch.Tensor, sigma: float | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The clean-latent prediction x0 = x_s - s v (s as in ``noised``)."""
    return x - _bcast(sigma, x) * v


def guided(
    cond: ModelFn,
    uncond: ModelFn | None,
    scale: float,
    interval: tuple[float, float] = (0.0, 1.0),
    outside_scale: float = 1.0,
) -> ModelFn:
    """Classifier-free guidance v_u + scale (v_c - v_u) against the empty prompt; ``cond`` itself at scale 1.

    ``interval`` (lo, hi) guides with ``scale`` only at noise levels lo <= s <= hi (per sample where s is (B,)) and
    with ``outside_scale`` elsewhere (1: the conditional velocity), a guidance interval (Kynkaanniemi et al., 2024);
    the default guides everywhere.
    """
    lo, hi = interval
    everywhere = lo <= 0.0 and hi >= 1.0
    if uncond is None or (scale == 1.0 and (everywhere or outside_scale == 1.0)):
        return cond

    def v(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        v_u, v_c = uncond(x, s), cond(x, s)
        if everywhere:
            return v_u + scale * (v_c - v_u)
        level = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        w = torch.where((level >= lo) & (level <= hi), scale, outside_scale).to(x.dtype)
        return v_u + _bcast(w, x) * (v_c - v_u)

    return v


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
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
):
    """Few-step sampling that predicts x0 at each sigma and re-noises it to the next one (DMD2 style).

    ``noise_fn(x)`` gives the re-noising draws (default ``torch.randn_like``; ``SeededRenoise`` for per-seed
    videos). Matches diffusers' FlowMatchEulerDiscreteScheduler with ``stochastic_sampling=True``.
    """
    noise_fn = noise_fn or torch.randn_like
    x = noise
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = x0_from_v(x, s, model_fn(x, s))
        if s_next > 0:
            x = noised(x0, noise_fn(x0), s_next)
        else:
            x = x0
        if callback is not None:
            callback(i, s, x)
    return x
