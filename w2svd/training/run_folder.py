"""The run folder: writable, held by one run at a time, and the config each part of the run was trained with."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from w2svd.config import ConfigError

log = logging.getLogger(__name__)

LOCK = ".lock"
HISTORY = "config-history"  # every config the run was trained with, numbered in the order they were used
# Settings that change how a run is watched or how long it goes on, not what it trains: a resume may change them
RUN_CONTROL_KEYS = frozenset(
    {
        "output_dir",  # a copied run folder resumes where the original stopped (a branch of the run)
        "max_steps",
        "checkpoint_every",
        "checkpoints_total_limit",
        "log_every",
        "validate_every",
        "threads",
        "dist_timeout_s",
        "skip_nonfinite",
        "method.val_prompts",
        "method.val_metrics_n",
    }
)


class RunLockedError(RuntimeError):
    """Another live process trains into the same output_dir."""


def check_output_dir(out: Path) -> None:
    """Fail before any work if the run folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: every rank checks before any collective
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise OSError(f"output_dir {str(out)!r} is not writable ({e}); choose another with output_dir=PATH") from e


class RunLock:
    """An exclusive ``flock`` on ``<out>/.lock`` holding the owner's PID; the kernel drops it if the owner dies."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"output_dir {str(self.path.parent)!r} is in use by another training run ({holder}); wait for it "
                "to finish or stop it, or train into another folder with output_dir=PATH"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}, since {time.ctime()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def in_use(out: str | Path) -> bool:
    """Whether a live training run holds ``out``'s lock now (a folder without a lock file is not in use)."""
    path = Path(out) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own shared lock
    return False


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every setting that differs (a missing key reads as None)."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def record_config(cfg, out: Path, allow_change: bool = False) -> None:
    """Write ``config.yaml``; on a resume with other settings, refuse unless ``allow_change``, and keep history.

    Only RUN_CONTROL_KEYS may change silently (a longer run, other log intervals); every config used is kept in
    ``config-history/`` so the run's provenance stays complete.
    """
    path = out / "config.yaml"
    data = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as YAML reads them back
    text = yaml.safe_dump(data, sort_keys=False)
    history = out / HISTORY
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        changes = config_changes(old, data)
        if not changes:
            return
        trained = {k: v for k, v in changes.items() if k not in RUN_CONTROL_KEYS}
        if trained and not allow_change:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in trained.items()))
            raise ConfigError(
                f"output_dir {str(out)!r} holds a run trained with other settings ({listed}). Resuming would mix "
                "them silently: re-run with the original settings, choose another output_dir, or pass "
                "--allow-config-change to continue with the new ones (the old config is kept in "
                f"{HISTORY}/)"
            )
        log.warning("config changed on resume (%s); the previous one is kept in %s/", ", ".join(changes), HISTORY)
    history.mkdir(exist_ok=True)
    n = len(list(history.glob("config-*.yaml")))
    (history / f"config-{n:03d}.yaml").write_text(text)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
