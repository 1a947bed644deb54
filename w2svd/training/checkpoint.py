"""Atomic, verified training checkpoints: trained tensors, optimisers, schedulers, RNG and step.

Nothing here can run code on load: trained tensors are safetensors, and the training state (optimiser and scheduler
state, RNG, step) is read with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain Python data
(plus numpy arrays, for checkpoints written before the RNG state was stored as plain lists). The sha256 list in
``meta.json`` detects torn writes and bit rot; it is not a signature.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
DAMAGED = "damaged-"  # a checkpoint that failed verification is renamed to this prefix: kept, never loaded
META = "meta.json"  # written last; lists each file's sha256, so a torn write is detectable
SPARE_BYTES = 64 << 20  # free space a checkpoint write leaves on the disk, beyond its own size
# numpy RNG state of older checkpoints: these globals only rebuild arrays (torch's documented allow-list pattern)
NUMPY_SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written (disk full, I/O error) or that is refused on load (unsafe content)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],  # plain data, no numpy pickle
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _nbytes(obj: Any) -> int:
    """Bytes of every tensor in a nested structure of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def check_free_space(root: Path, needed: int) -> None:
    """CheckpointError naming the sizes when ``root``'s disk has less than ``needed`` + SPARE_BYTES free."""
    free = shutil.disk_usage(root).free
    if free < needed + SPARE_BYTES:
        raise CheckpointError(
            f"not enough disk space for a checkpoint in {root}: it needs about {(needed + SPARE_BYTES) >> 20} MiB "
            f"and {free >> 20} MiB are free; free some space or move output_dir, then re-run the same command "
            "(the previous checkpoint is kept)"
        )


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], limit: int) -> Path:
    """Write ``root/checkpoint-<step>`` atomically (temp folder, then rename) and prune to ``limit``.

    A full disk or an I/O error raises CheckpointError before anything older is touched.
    """
    root.mkdir(parents=True, exist_ok=True)
    check_free_space(root, _nbytes(tensors) + _nbytes(state))
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "trainable.safetensors")
        torch.save({**state, "rng": rng_state(), "step": step}, tmp / "training_state.pt")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / META).write_text(json.dumps({"step": step, "files": files}, indent=1))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # a re-save of the same step replaces it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free >> 20
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {root} ({type(e).__name__}: {e}; {free} MiB free); "
            "fix the disk or move output_dir, then re-run the same command (the previous checkpoint is kept)"
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _verified[final] = _stamp(final)  # written and hashed just now
    prune(root, limit)
    return final


_verified: dict[Path, tuple[int, int]] = {}  # checkpoints verified in this process, by their meta.json stamp


def _stamp(ckpt: Path) -> tuple[int, int]:
    st = (ckpt / META).stat()
    return st.st_mtime_ns, st.st_size


def _intact(ckpt: Path) -> str | None:
    """``verify`` with a per-process memo, so pruning does not re-hash unchanged checkpoints at every save."""
    try:
        if _verified.get(ckpt) == _stamp(ckpt):
            return None
    except OSError:
        pass
    problem = verify(ckpt)
    if problem is None:
        _verified[ckpt] = _stamp(ckpt)
    return problem


def prune(root: Path, limit: int) -> None:
    """Keep the ``limit`` newest checkpoints that verify; delete older ones; move damaged ones aside.

    The newest intact checkpoint is never deleted, whatever lies above it: a damaged checkpoint is renamed
    ``damaged-checkpoint-<step>`` (kept for inspection, never loaded, not counted), not trusted.
    """
    kept = 0
    for ckpt in reversed(list_checkpoints(root)):
        if kept >= limit:
            shutil.rmtree(ckpt, ignore_errors=True)
            continue
        problem = _intact(ckpt)
        if problem is None:
            kept += 1
            continue
        aside = root / f"{DAMAGED}{ckpt.name}"
        shutil.rmtree(aside, ignore_errors=True)
        ckpt.rename(aside)
        log.warning("checkpoint %s is damaged (%s): moved aside to %s", ckpt, problem, aside)
    for tmp in root.glob(".tmp-*"):  # leftovers of a write that was killed
        shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def verify(ckpt: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong."""
    meta = ckpt / META
    if not meta.is_file():
        return f"{meta.name} missing (write interrupted)"
    try:
        files = json.loads(meta.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{meta.name} unreadable: {e}"
    for name, digest in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} missing"
        if sha256_file(path) != digest:
            return f"{name} is corrupt (checksum mismatch)"
    return None


def load_latest(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path] | None:
    """The newest intact checkpoint under ``root`` (corrupt ones are skipped with a warning), or None."""
    for ckpt in reversed(list_checkpoints(root)):
        problem = verify(ckpt)
        if problem:
            log.warning("skipping checkpoint %s: %s", ckpt, problem)
            continue
        tensors = load_file(ckpt / "trainable.safetensors")
        return tensors, load_state(ckpt / "training_state.pt"), ckpt
    return None


def load_state(path: Path) -> dict[str, Any]:
    """The training state at ``path``, unpickled with ``weights_only=True``: data only, never code."""
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(unsupported GLOBAL \S+|Unsupported operand \S+)", str(e), re.IGNORECASE)
        what = found.group(1) if found else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it asks to run or build something other than tensors and plain data "
            f"({what}). w2svd never writes such a file; it was altered or comes from elsewhere. Delete that "
            "checkpoint folder to resume from the previous one"
        ) from e
