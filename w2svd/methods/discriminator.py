"""Optional DMD2-style discriminator: a small head on the fake score's intermediate token features.

The fake score doubles as the discriminator's trunk: a forward hook taps one block's token features
(``Backbone.feature_module``), a per-token MLP scores them, and the logits are averaged per sample.
Non-saturating losses: the head (and fake-score LoRA) learn real > generated; the generator learns to
raise the logit of its samples. Off by default (``method.discriminator``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class FeatureTap:
    """Keeps the token features ``module`` outputs, but only inside ``capture()``."""

    def __init__(self, module: nn.Module) -> None:
        self.active = False
        self.features: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, output) -> None:
        if self.active:
            self.features = output[0] if isinstance(output, tuple) else output  # (B, N, D)

    @contextlib.contextmanager
    def capture(self) -> Iterator[FeatureTap]:
        self.active, self.features = True, None
        try:
            yield self
        finally:
            self.active = False

    def run(self, fn, *args) -> torch.Tensor:
        """Call ``fn(*args)`` and return the tapped features (the call's own output is discarded)."""
        with self.capture():
            fn(*args)
        if self.features is None:
            raise RuntimeError("the feature tap saw no forward pass: is the tapped block part of this model?")
        return self.features


class DiscriminatorHead(nn.Module):
    """LayerNorm + 2-layer MLP per token, logits averaged over tokens: (B, N, D) -> (B,)."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).squeeze(-1).mean(dim=1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the discriminator: softplus(-D(real)) + softplus(D(generated))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the generator: softplus(-D(generated))."""
    return F.softplus(-fake_logits).mean()
