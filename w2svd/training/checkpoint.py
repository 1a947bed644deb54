"""Atomic, verified training checkpoints: trained tensors, optimisers, schedulers, RNG and step."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
META = "meta.json"  # written last; lists each file's sha256, so a torn write is detectable


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], limit: int) -> Path:
    """Write ``root/checkpoint-<step>`` atomically (temp folder, then rename) and prune to ``limit``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "trainable.safetensors")
        torch.save({**state, "rng": rng_state(), "step": step}, tmp / "training_state.pt")
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / META).write_text(json.dumps({"step": step, "files": files}, indent=1))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # a re-save of the same step replaces it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, limit)
    return final


def prune(root: Path, limit: int) -> None:
    for old in list_checkpoints(root)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)
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
        if _sha256(path) != digest:
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
        state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False)
        return tensors, state, ckpt
    return None
