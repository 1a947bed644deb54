"""Paired bootstrap intervals: which gaps between two benchmark rows are larger than the choice of held-out pairs.

Two rows are scored on the same held-out (prompt, seed) pairs, so their gap is measured pair by pair: each resample
draws the pairs with replacement, once, and recomputes both rows' FD-clip, FD-frame and motion in region on that
draw (the reference real clip of a pair goes with it). The interval is the central ``level`` share of the
resampled gaps. It covers the sampling of pairs only, not the run-to-run or checkpoint-to-checkpoint swing of
training; a gap inside it is not told apart from the luck of the draw.

A resample repeats some pairs, which biases each FD upwards; both rows of a gap share the draw, so the bias
largely cancels in the gap, and the interval is read for the gap, not for either FD.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from w2svd.eval.metrics import Embedding, frechet_distance

METRICS = ("fd_clip", "fd_frame", "motion_region")  # lower, lower, higher is better


@dataclasses.dataclass
class PerClip:
    """What a row's figures are computed from, per held-out pair: enough to recompute them on any resample."""

    clip_features: np.ndarray  # (N, D_clip)
    frame_features: np.ndarray  # (N, F, D_frame)
    right: np.ndarray  # (N,) bool: the motion is visible and in the prompted region (NaN-free)

    @classmethod
    def from_embedding(cls, emb: Embedding, right: np.ndarray | None = None) -> PerClip:
        n = len(emb.clip_features)
        if len(emb.frame_features) % n:
            raise ValueError(f"{len(emb.frame_features)} frame rows do not split into {n} clips")
        frames = emb.frame_features.reshape(n, len(emb.frame_features) // n, -1)
        flags = np.zeros(n, bool) if right is None else np.asarray(right, bool)
        if flags.shape != (n,):
            raise ValueError(f"need one region flag per clip ({n}); got shape {flags.shape}")
        return cls(np.asarray(emb.clip_features, np.float32), np.asarray(frames, np.float32), flags)

    def __len__(self) -> int:
        return len(self.clip_features)

    def figures(self, reference: PerClip, index: np.ndarray | None = None) -> dict[str, float]:
        """FD-clip, FD-frame (against ``reference``'s pairs) and motion in region on the pairs ``index``."""
        i = np.arange(len(self)) if index is None else index
        frames, ref_frames = self.frame_features[i], reference.frame_features[i]
        return {
            "fd_clip": frechet_distance(self.clip_features[i], reference.clip_features[i]),
            "fd_frame": frechet_distance(
                frames.reshape(-1, frames.shape[-1]), ref_frames.reshape(-1, frames.shape[-1])
            ),
            "motion_region": float(self.right[i].mean()),
        }

    def save(self, path: str | Path, meta: dict) -> None:
        """Write the features with ``meta`` (what they were measured on), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            clip_features=self.clip_features,
            frame_features=self.frame_features,
            right=self.right,
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, meta: dict) -> PerClip | None:
        """The features saved at ``path`` if they were measured on ``meta``; None if absent, stale or unreadable."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["meta"])) != json.loads(json.dumps(meta, sort_keys=True)):
                    return None
                return cls(z["clip_features"], z["frame_features"], z["right"].astype(bool))
        except (OSError, ValueError, KeyError):
            return None


def resampled(row: PerClip, reference: PerClip, resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """A row's figures on each of ``resamples`` draws of its pairs with replacement. The draws depend on the seed and
    the number of pairs only, so every row resampled with the same seed sees the same draws: gaps are paired."""
    n = len(row)
    if len(reference) != n:
        raise ValueError(f"rows must be scored on the same pairs; got {n} and {len(reference)} clips")
    if n < 8:
        raise ValueError(f"n={n} pairs is too few to bootstrap; use the benchmark's 256")
    if resamples < 100:
        raise ValueError(f"need resamples >= 100; got {resamples}")
    rng = np.random.default_rng(seed)
    out = {k: np.empty(resamples) for k in METRICS}
    for r in range(resamples):
        for k, v in row.figures(reference, rng.integers(0, n, n)).items():
            out[k][r] = v
    return out


def gaps(
    full_a: dict[str, float],
    full_b: dict[str, float],
    draws_a: dict[str, np.ndarray],
    draws_b: dict[str, np.ndarray],
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Per metric: ``gap`` (a - b on all pairs; motion in region in share points), ``low``/``high`` (the central
    ``level`` interval of the resampled gaps) and ``a_better`` (share of resamples in which a beats b)."""
    if not 0.5 < level < 1:
        raise ValueError(f"need level in (0.5, 1); got {level}")
    tail = (1 - level) / 2
    out = {}
    for k in METRICS:
        diff = draws_a[k] - draws_b[k]
        better = diff > 0 if k == "motion_region" else diff < 0
        out[k] = {
            "gap": full_a[k] - full_b[k],
            "low": float(np.quantile(diff, tail)),
            "high": float(np.quantile(diff, 1 - tail)),
            "a_better": float(better.mean()),
        }
    return out


def paired_bootstrap(
    a: PerClip, b: PerClip, reference: PerClip, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float]]:
    """The gaps of row a to row b (``gaps``), both resampled on the same draws of pairs."""
    if len(a) != len(b):
        raise ValueError(f"rows must be scored on the same pairs; got {len(a)} and {len(b)} clips")
    draws = [resampled(row, reference, resamples, seed) for row in (a, b)]
    return gaps(a.figures(reference), b.figures(reference), *draws, level)


def verdict(gap: dict[str, float], higher_is_better: bool = False) -> str:
    """'better', 'worse' or 'within noise': whether the interval of a gap excludes 0, and on which side."""
    if gap["low"] > 0:
        return "better" if higher_is_better else "worse"
    if gap["high"] < 0:
        return "worse" if higher_is_better else "better"
    return "within noise"
