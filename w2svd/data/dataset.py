"""Torch datasets over the portrait world and the fixed held-out evaluation pairs."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from w2svd.data.attributes import ATTRIBUTE_NAMES, Portrait, sample_portrait
from w2svd.data.captions import caption
from w2svd.data.render import render_clip

HELDOUT_SEED = 20250317  # fixes the evaluation prompts and seeds for every report


@dataclasses.dataclass(frozen=True)
class Example:
    """One (prompt, seed) pair with its ground truth."""

    prompt: str
    seed: int  # generation seed (initial noise) for models; render seed for the real clip
    portrait: Portrait


def make_example(split: str, seed: int, index: int) -> Example:
    rng = np.random.default_rng([seed, index])
    portrait = sample_portrait(rng, split)
    return Example(prompt=caption(portrait, rng), seed=int(rng.integers(2**31)), portrait=portrait)


def heldout_examples(n: int = 256, seed: int = HELDOUT_SEED) -> list[Example]:
    """The fixed evaluation pairs: held-out attribute combinations, never seen in training."""
    return [make_example("heldout", seed, i) for i in range(n)]


def video_to_tensor(clip: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_video(x: torch.Tensor) -> np.ndarray:
    """float (3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class PortraitDataset(Dataset):
    """Deterministic map-style dataset: item i is the same clip for the same (split, seed)."""

    def __init__(
        self, split: str = "train", length: int = 1_000_000, seed: int = 0, num_frames: int = 9, size: int = 64
    ) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split={split!r} must be 'train' or 'heldout'")
        if split == "heldout" and seed == 0:
            seed = HELDOUT_SEED
        self.split, self.length, self.seed = split, length, seed
        self.num_frames, self.size = num_frames, size

    def __len__(self) -> int:
        return self.length

    def example(self, index: int) -> Example:
        return make_example(self.split, self.seed, index)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        ex = self.example(index)
        clip = render_clip(ex.portrait, ex.seed, self.num_frames, self.size)
        return {
            "video": video_to_tensor(clip),  # (3, F, H, W)
            "prompt": ex.prompt,
            "labels": torch.tensor(ex.portrait.as_tuple(), dtype=torch.long),  # (len(ATTRIBUTE_NAMES),)
        }


def render_examples(examples: list[Example], num_frames: int = 9, size: int = 64) -> np.ndarray:
    """Real clips for a list of examples: uint8 (N, F, H, W, 3)."""
    return np.stack([render_clip(ex.portrait, ex.seed, num_frames, size) for ex in examples])


def labels_of(examples: list[Example]) -> np.ndarray:
    """(N, len(ATTRIBUTE_NAMES)) int array of ground-truth class indices."""
    return np.array([ex.portrait.as_tuple() for ex in examples], dtype=np.int64).reshape(-1, len(ATTRIBUTE_NAMES))


def step_batch(dataset: Dataset, seed: int, step: int, batch_size: int, rows: slice = slice(None)) -> dict:
    """The batch for a training step: a pure function of (seed, step), so a resumed run sees the same data.

    ``rows`` keeps one process's part of the ``batch_size`` items (only those are rendered).
    """
    rng = np.random.default_rng([seed, step, 0xDA7A])
    items = [dataset[int(i)] for i in rng.integers(len(dataset), size=batch_size)[rows]]
    return {
        "video": torch.stack([it["video"] for it in items]),  # (B, 3, F, H, W)
        "prompt": [it["prompt"] for it in items],
        "labels": torch.stack([it["labels"] for it in items]),  # (B, A)
    }
