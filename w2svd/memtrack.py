"""Live tensor memory on any device, like CUDA's ``max_memory_allocated``: for measuring training steps on CPU.

CPU has no allocator counters and its resident size (RSS) also counts freed memory the C allocator keeps. This
counts what is alive instead: every tensor storage an operator creates (seen through a ``TorchDispatchMode``,
which also sees autograd's backward and the optimiser's ops), plus the storages alive when tracking starts
(parameters, buffers, optimiser states), each counted once and uncounted when Python frees it (a weak reference
to the storage, which torch keeps alive as long as any tensor uses it). Views share their base's storage.

    with LiveMemory() as mem:
        mem.add_existing(model.parameters())
        loss.backward()
    print(mem.peak, mem.live)
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveMemory(TorchDispatchMode):
    """Bytes of live tensor storages (``live``) and their maximum while tracking (``peak``)."""

    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.device = device  # count only storages on this device type ('cpu', 'cuda'); None = all
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}  # id of the storage's weakref -> the weakref (kept alive)
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta" or (self.device is not None and t.device.type != self.device):
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested or other storage-less tensors
            return
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)

        def release(ref: weakref.ref, nbytes: int = nbytes) -> None:
            self.live -= nbytes
            self._refs.pop(id(ref), None)

        ref = weakref.ref(storage, release)
        self._refs[id(ref)] = ref

    def add_existing(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that exist already (parameters, buffers, optimiser states); each storage once."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._track(t)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storages counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())
