"""Exponential moving average of a set of parameters, swappable in for validation and export."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, after every optimiser step of the tracked params."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in (0, 1)")
        self.params = dict(named_params)
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[:2]}")
        for n, t in state.items():
            self.shadow[n].copy_(t)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the model."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])


def averaged(ema: EMA | None) -> contextlib.AbstractContextManager:
    """``ema.swapped()``, or a no-op when the run keeps no EMA: the weights that validation and export should see."""
    return ema.swapped() if ema is not None else contextlib.nullcontext()
