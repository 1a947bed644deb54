"""Temporal fidelity: how much a clip moves, how much of that is in the face, and how much of it is flicker.

- **motion**: mean absolute grey-level difference between consecutive frames (0-255 units, per pixel and frame pair);
- **face share**: the part of that summed difference inside the eye and mouth bands (``motion_regions.band_masks``);
- **flicker**: mean absolute second difference ``x[t+1] - 2 x[t] + x[t-1]``, the high temporal frequencies. Smooth
  motion has little of it; a head that jitters from frame to frame, or detail re-invented in every frame, has a lot.

The benchmark reports them as ratios to real clips of the same prompts (motion: 1.0 is right) and to the default
base (flicker). ``python -m w2svd.eval --ladder`` prints them for real and degraded clips next to the FDs.
"""

from __future__ import annotations

import numpy as np

from w2svd.eval.motion_regions import band_masks

KEYS = ("motion", "face_share", "flicker")


def _grey(clips: np.ndarray) -> np.ndarray:
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.shape[1] < 3:
        raise ValueError(f"clips must be (N, F>=3, H, W, 3) uint8 for second differences, got shape {clips.shape}")
    return clips.astype(np.float32).mean(-1)  # (N, F, H, W)


def _sums(clips: np.ndarray) -> dict[str, np.ndarray]:
    """Per clip (N,): summed |first differences| overall and in the face bands, and mean |first|/|second| ones."""
    grey = _grey(clips)
    d1 = np.abs(np.diff(grey, axis=1))  # (N, F-1, H, W)
    bands = band_masks(clips.shape[2])
    per_pixel = d1.sum(1)  # (N, H, W)
    return {
        "total": per_pixel.sum((1, 2)),
        "face": per_pixel[:, bands["eyes"] | bands["mouth"]].sum(1),
        "motion": d1.mean((1, 2, 3)),
        "flicker": np.abs(np.diff(grey, n=2, axis=1)).mean((1, 2, 3)),
    }


def temporal_figures(clips: np.ndarray) -> dict[str, np.ndarray]:
    """Per clip (N,): ``motion``, ``face_share`` (0 for a clip that does not move) and ``flicker``."""
    s = _sums(clips)
    share = np.divide(s["face"], s["total"], out=np.zeros(len(s["total"])), where=s["total"] > 0)
    return {"motion": s["motion"], "face_share": share, "flicker": s["flicker"]}


def summarise(clips: np.ndarray) -> dict[str, float]:
    """Means over clips of motion and flicker; ``face_share`` is the face bands' share of all the clips' motion."""
    s = _sums(clips)
    total = float(s["total"].sum())
    share = float(s["face"].sum()) / total if total > 0 else 0.0
    return {"motion": float(s["motion"].mean()), "face_share": share, "flicker": float(s["flicker"].mean())}


def ratio(value: float, reference: float) -> float | None:
    """``value / reference``, or None when the reference does not move at all."""
    return value / reference if reference > 0 else None


def ladder(n: int = 256, steps: tuple | None = None) -> list[dict[str, float | str]]:
    """Temporal figures of real clips of ``heldout_examples(n)`` and of each degradation of the sanity ladder."""
    from w2svd.data import heldout_examples, render_examples
    from w2svd.eval.metrics import LADDER, degrade

    real = render_examples(heldout_examples(n))
    rows = []
    for name, strength in (("real", 0.0), *(LADDER if steps is None else steps)):
        rows.append({"name": name, "strength": float(strength), **summarise(degrade(real, name, strength))})
    return rows
