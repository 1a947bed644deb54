"""Attribute vocabulary of the synthetic talking-portrait world, and the held-out combinations."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

# Every attribute the renderer draws and every caption names. Order of values is the class index.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": ("man", "woman"),
    "skin": ("pale", "tan", "brown", "dark"),
    "hair_colour": ("black", "brown", "blonde", "red", "white"),
    "hair_style": ("short", "long", "curly"),
    "eye_colour": ("blue", "green", "brown"),
    "glasses": ("no", "yes"),
    "background": ("teal", "orange", "purple", "grey", "yellow", "pink"),
    "motion": ("talking", "blinking", "smiling", "nodding", "turning"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
# Static appearance (everything a single frame shows) vs the motion kind (needs several frames).
APPEARANCE_NAMES: tuple[str, ...] = tuple(n for n in ATTRIBUTE_NAMES if n != "motion")

# One combination in HELDOUT_MODULUS is reserved for evaluation and never used for training.
HELDOUT_MODULUS = 40


@dataclasses.dataclass(frozen=True)
class Portrait:
    """The ground-truth labels of one clip, as class indices into ATTRIBUTES."""

    gender: int
    skin: int
    hair_colour: int
    hair_style: int
    eye_colour: int
    glasses: int
    background: int
    motion: int

    def __post_init__(self) -> None:
        for name in ATTRIBUTE_NAMES:
            value = getattr(self, name)
            n = len(ATTRIBUTES[name])
            if not isinstance(value, (int, np.integer)) or not 0 <= value < n:
                raise ValueError(f"Portrait.{name}={value!r} must be an int in [0, {n}): {ATTRIBUTES[name]}")

    def label(self, name: str) -> str:
        return ATTRIBUTES[name][getattr(self, name)]

    def labels(self) -> dict[str, str]:
        return {name: self.label(name) for name in ATTRIBUTE_NAMES}

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(int(getattr(self, n)) for n in ATTRIBUTE_NAMES)

    @classmethod
    def from_labels(cls, **labels: str) -> Portrait:
        """Build from label strings, e.g. ``Portrait.from_labels(gender="man", ...)``."""
        missing = set(ATTRIBUTE_NAMES) - set(labels)
        unknown = set(labels) - set(ATTRIBUTE_NAMES)
        if missing or unknown:
            raise ValueError(f"need exactly {ATTRIBUTE_NAMES}; missing {sorted(missing)}, unknown {sorted(unknown)}")
        idx = {}
        for name, value in labels.items():
            if value not in ATTRIBUTES[name]:
                raise ValueError(f"{name}={value!r} is not one of {ATTRIBUTES[name]}")
            idx[name] = ATTRIBUTES[name].index(value)
        return cls(**idx)

    def is_heldout(self) -> bool:
        """True for the attribute combinations reserved for evaluation (about 1 in HELDOUT_MODULUS)."""
        digest = hashlib.sha256(repr(self.as_tuple()).encode()).digest()
        return int.from_bytes(digest[:4], "little") % HELDOUT_MODULUS == 0


def sample_portrait(rng: np.random.Generator, split: str = "train") -> Portrait:
    """Draw uniform attributes; ``split`` "train" rejects held-out combinations, "heldout" keeps only them."""
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"split={split!r} must be 'train', 'heldout' or 'any'")
    while True:
        p = Portrait(*(int(rng.integers(len(ATTRIBUTES[n]))) for n in ATTRIBUTE_NAMES))
        if split == "any" or p.is_heldout() == (split == "heldout"):
            return p
