"""W2SVD in four stateless pieces, named as in the paper (our reading of arXiv 2503.13319; see the README).

- **real score**: the frozen backbone plus ``alpha_weak`` x the fake-score LoRA (0: vanilla DMD's teacher), guided
  against the empty prompt as the base samples (``guided``);
- **generator rollout** (backward simulation, DMD2): the few-step sampler itself (``sampling.sample_renoise``) run
  without gradient from pure noise through the first k steps of the generator's sigma list, then one x0 prediction
  with gradient;
- **distribution-matching loss**: move the generated x0 along (x0_fake - x0_real) at a random noise level,
  normalised per sample (DMD2) or over the batch (FastVideo);
- **fake-score loss**: flow matching of the fake score on generated latents, plus ``lambda_gt`` x the same loss on
  data latents (the ground-truth term);
- **temporal term** (ours, off by default): at a low noise level with fresh noise (where the DM gradient barely
  sees fine detail), pull the generated x0's frame-to-frame change toward the real score's re-denoised one, or by
  the fake and real scores' gap in it.

Every network is a velocity function ``v(x_s, s)``; which adapter or copy computes it is ``methods/roles.py``'s
business, so nothing here holds state. Rectified-flow notation: x_s = (1 - s) x0 + s eps, v = eps - x0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from w2svd.sampling import NoiseFn, guided, noised, sample_euler, sample_renoise, x0_from_v

__all__ = [
    "distribution_matching_loss",
    "fake_score_loss",
    "guided",
    "noised",
    "rollout",
    "temporal_teacher_loss",
    "x0_from_v",
]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_s (B, ...), s (B,) or float) -> v


def rollout(
    generator: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, k: int, noise_fn: NoiseFn, renoise: bool = True
):
    """Backward simulation: the generator's own few-step sampler from pure noise to sigmas[k], no gradient.

    ``renoise``: re-noise each x0 prediction with ``noise_fn`` (DMD2), else deterministic Euler steps; either way the
    sampler inference uses (``GeneratorMeta.renoise``)."""
    if not k:
        return noise
    with torch.no_grad():
        if renoise:
            return sample_renoise(generator, noise, sigmas[: k + 1], noise_fn)
        return sample_euler(generator, noise, sigmas[: k + 1])


def distribution_matching_loss(
    x0_hat: torch.Tensor,
    real: VelocityFn,
    fake: VelocityFn,
    s: torch.Tensor,
    eps: torch.Tensor,
    normalizer: str = "per_sample",
) -> tuple[torch.Tensor, dict[str, float]]:
    """DMD's generator loss at noise levels s (B,): 0.5 ||x0_hat - sg(x0_hat - grad)||^2, whose gradient with
    respect to x0_hat is ``grad`` = (x0_fake - x0_real) / mean|x0_hat - x0_real| (divided by the element count)."""
    x0 = x0_hat.detach()
    x_s = noised(x0, eps, s)
    with torch.no_grad():
        x0_real = x0_from_v(x_s, s, real(x_s, s))
        x0_fake = x0_from_v(x_s, s, fake(x_s, s))
        if normalizer == "per_sample":
            norm = (x0 - x0_real).abs().mean(dim=tuple(range(1, x0.dim())), keepdim=True)
        else:
            norm = (x0 - x0_real).abs().mean()
        grad = torch.nan_to_num((x0_fake - x0_real) / norm.clamp_min(1e-6))
    loss = 0.5 * F.mse_loss(x0_hat, (x0_hat - grad).detach())
    terms = {
        "dm/grad_norm": float(grad.flatten(1).norm(dim=1).mean()),
        "dm/real_fake_gap": float((x0_fake - x0_real).abs().mean()),
    }
    return loss, terms


def fake_score_loss(
    flow_matching: Callable[[VelocityFn, torch.Tensor], torch.Tensor],
    fake: VelocityFn,
    x0_generated: torch.Tensor,
    x0_data: torch.Tensor,
    lambda_gt: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The fake score's flow-matching loss on generated latents, + lambda_gt x on data latents (the GT term)."""
    loss = flow_matching(fake, x0_generated)
    terms = {"fake/loss_generated": loss.item()}
    if lambda_gt > 0:
        loss_gt = flow_matching(fake, x0_data)
        loss = loss + lambda_gt * loss_gt
        terms["fake/loss_real"] = loss_gt.item()
    return loss, terms


def temporal_teacher_loss(
    x0_hat: torch.Tensor,
    real: VelocityFn,
    s: torch.Tensor,
    eps: torch.Tensor,
    fake: VelocityFn | None = None,
    frame_dim: int = 2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pull the frame differences d of x0_hat (along ``frame_dim``) at low noise levels s (B,), with fresh noise.

    x0_hat is noised to s with ``eps`` and re-denoised in one score step; only the change between consecutive latent
    frames is compared, so appearance is left to the DM loss. The loss is 0.5 ||d - sg(d - g)||^2 with the pull g:

    - ``fake`` None (SDEdit target): g = (d - d_real) / mean|d_real|, toward the real score's re-denoised change,
      over the batch's mean teacher change (per sample, a still clip's tiny change would blow its pull up). The
      one-step x0 is a conditional mean, so its change is smaller than any sample's: this target damps all motion;
    - ``fake`` given (score gap): g = (d_fake - d_real) / mean|d - d_real|, the DM gradient's frame-difference part
      at these levels: both scores' one-step x0 are conditional means, so their smoothing cancels in the gap.
    """
    if x0_hat.shape[frame_dim] < 2:
        raise ValueError(f"the temporal term needs >= 2 latent frames along dim {frame_dim}, got {tuple(x0_hat.shape)}")
    with torch.no_grad():
        x_s = noised(x0_hat.detach(), eps, s)
        d_real = torch.diff(x0_from_v(x_s, s, real(x_s, s)), dim=frame_dim)
        d_fake = None if fake is None else torch.diff(x0_from_v(x_s, s, fake(x_s, s)), dim=frame_dim)
    d = torch.diff(x0_hat, dim=frame_dim)
    with torch.no_grad():
        gap = d - d_real
        if d_fake is None:
            pull = torch.nan_to_num(gap / d_real.abs().mean().clamp_min(1e-6))
        else:
            pull = torch.nan_to_num((d_fake - d_real) / gap.abs().mean().clamp_min(1e-6))
    loss = 0.5 * F.mse_loss(d, (d - pull).detach())
    terms = {
        "temporal/gap": float(gap.abs().mean()),
        "temporal/change_real": float(d_real.abs().mean()),
        "temporal/pull_rms": float(pull.pow(2).mean().sqrt()),
    }
    return loss, terms
