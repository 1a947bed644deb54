"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the training loop.

With ``sharding: fsdp`` (or an accelerate config with ``distributed_type: FSDP``) and N > 1 processes, each
transformer the method names in ``Method.sharded_modules`` is sharded block by block (the classes in its
``_no_split_modules``) and as a whole: every process keeps 1/N of each parameter, frozen backbone and LoRAs
alike, and gathers one block at a time for its forward and backward. FSDP2 shards parameter by parameter,
so a bf16 frozen backbone and fp32 LoRAs share a block without the frozen weights getting fp32 copies.

What changes for the loop, all handled here:

- sharded parameters are ``DTensor`` s: their gradients arrive reduce-scattered and averaged, the small
  unsharded modules (e.g. a discriminator head) still need the loop's all-reduce, and the gradient norm
  sums squares over shards;
- checkpoints hold full tensors (``gather``), so a run can resume with another number of processes or
  without sharding; loading scatters them back (``assign``, ``shard_optimizer_state``);
- every process takes part in a forward, so validation runs on all of them (rank 0 writes), and so does
  the export (all gather, rank 0 writes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


def wrap_units(module: torch.nn.Module, classes: Iterable[str] | None = None) -> list[torch.nn.Module]:
    """The submodules sharded as units: instances of ``classes`` (default: the model's ``_no_split_modules``)."""
    names = set(classes if classes is not None else getattr(module, "_no_split_modules", None) or ())
    return [m for m in module.modules() if m is not module and type(m).__name__ in names]


def shard_modules(
    modules: list[torch.nn.Module], classes: Iterable[str] | None = None, reshard_after_forward: bool = True
) -> int:
    """Shard each module's units, then the module itself (its remaining parameters); return the unit count."""
    count = 0
    for module in modules:
        units = wrap_units(module, classes)
        for unit in reversed(units):  # inner units first
            fully_shard(unit, reshard_after_forward=reshard_after_forward)
        fully_shard(module, reshard_after_forward=reshard_after_forward)
        count += len(units) + 1
    return count


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def gather(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every DTensor replaced by its full tensor (collective: every process must call it)."""
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out[k] = gather(v)
        elif isinstance(v, DTensor):
            out[k] = v.full_tensor()
        else:
            out[k] = v
    return out


@torch.no_grad()
def assign(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` where ``dst`` may be sharded and ``src`` is the full tensor (the same on every process)."""
    if isinstance(dst, DTensor):
        src = distribute_tensor(src.to(dst.dtype), dst.device_mesh, dst.placements)
    dst.copy_(src)


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of a full state: turn the per-parameter states of sharded parameters into shards."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor) or p not in optimizer.state:
                continue
            state = optimizer.state[p]
            for k, v in state.items():
                if torch.is_tensor(v) and not isinstance(v, DTensor) and tuple(v.shape) == tuple(p.shape):
                    state[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale gradients to a total L2 norm of at most ``max_norm``; return the norm before scaling.

    The norm is over full gradients: squares of sharded gradients are summed over processes, replicated
    (already averaged) ones are counted once.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    local = torch.zeros((), dtype=torch.float64)
    sharded = torch.zeros((), dtype=torch.float64)
    for g in grads:
        if isinstance(g, DTensor):
            sharded += g.to_local().double().square().sum().cpu()
        else:
            local += g.double().square().sum().cpu()
    if any(isinstance(g, DTensor) for g in grads):
        device = next(g for g in grads if isinstance(g, DTensor)).to_local().device
        sharded = sharded.to(device)
        torch.distributed.all_reduce(sharded)
        sharded = sharded.cpu()
    norm = math.sqrt(float(local + sharded))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm
