"""The interface every training method implements; the loop in w2svd.trainer drives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from w2svd.losses import SampleNoise
from w2svd.training.config import TrainConfig


class Method:
    """A training method: what is trained, on which batches, with which losses, and what it exports.

    The loop calls, per step, for each phase in ``phases(step)``: ``arm(phase)``, ``loss(phase, batch)``,
    ``arm(phase)`` again, backward and the optimiser of that phase. What a phase trains is decided there alone:
    a loss may run any network (role switches never change ``requires_grad``); the second ``arm`` makes the
    trained network the active one again, which gradient checkpointing recomputes during backward. The loop
    stops a run whose phase produced no gradient for its parameters.
    """

    name: str = ""
    config_class: type = object
    uses_optim_lr = False  # True: param_groups takes optim.lr; False: the method section sets its learning rates
    shard: slice = slice(None)  # rows of each step's global batch this process trains on (set by the loop)

    def __init__(self, cfg: Any, train: TrainConfig, device: torch.device) -> None:
        self.cfg, self.train_cfg, self.device = cfg, train, device

    def param_groups(self) -> dict[str, tuple[list[torch.nn.Parameter], float]]:
        """phase -> (parameters, learning rate)."""
        raise NotImplementedError

    def arm(self, phase: str) -> None:
        """``requires_grad`` on the parameters trained in ``phase``, off on every other group's (methods with
        several networks on one module also make ``phase``'s the active one)."""
        for name, (params, _) in self.param_groups().items():
            for p in params:
                p.requires_grad_(name == phase)

    def phases(self, step: int) -> list[str]:
        return list(self.param_groups())

    def batch(self, step: int) -> dict:
        """This process's rows (``shard``) of the global batch for ``step``: a pure function of (run seed, step,
        rows), so resume needs no loader state and N processes together see the batch one process would."""
        raise NotImplementedError

    def step_noise(self, step: int) -> SampleNoise:
        """Per-sample noise for this process's rows of ``step``'s batch (see ``SampleNoise``)."""
        rows = range(self.train_cfg.batch_size)[self.shard]
        return SampleNoise(self.train_cfg.seed, step, rows, self.device)

    def loss(self, phase: str, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self, phase: str) -> None:
        """Called after each optimiser step of ``phase`` (EMA updates, counters)."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor (what a checkpoint must hold besides optimisers and RNG)."""
        raise NotImplementedError

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        """Set train/eval mode of the owned modules."""

    def sharded_modules(self) -> list[torch.nn.Module]:
        """The modules to shard under ``sharding: fsdp`` (none: the method does not support sharding)."""
        return []

    def rebind_parameters(self) -> None:
        """Re-collect parameter references after sharding replaced the modules' parameters."""

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Optional: write validation samples under out_dir and return scalar metrics to log."""
        return {}

    def export(self, out_dir: Path, write: bool = True) -> None:
        """Write the inference artifact (diffusers folder, LoRA, or weights file) into out_dir.

        Every process of a run calls it; only the one with ``write`` writes (sharded modules gather first).
        """
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls
