"""Procedural renderer of talking-portrait clips: numpy, anti-aliased shapes, deterministic per seed.

Coordinates are normalised: x and y in [-1, 1] across the frame, y pointing down. Each shape is
evaluated only inside its pixel bounding box, which keeps a 9x64x64 clip at about a millisecond.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from w2svd.data.attributes import Portrait

SKIN = np.array([(0.98, 0.86, 0.76), (0.86, 0.66, 0.48), (0.60, 0.40, 0.26), (0.36, 0.22, 0.14)])
HAIR = np.array([(0.07, 0.06, 0.06), (0.42, 0.24, 0.10), (0.96, 0.84, 0.40), (0.85, 0.24, 0.08), (0.93, 0.93, 0.93)])
EYES = np.array([(0.10, 0.45, 1.00), (0.10, 0.75, 0.20), (0.45, 0.24, 0.06)])
BACKGROUND = np.array(
    [
        (0.00, 0.55, 0.55),
        (1.00, 0.55, 0.08),
        (0.50, 0.22, 0.72),
        (0.55, 0.55, 0.55),
        (0.95, 0.90, 0.20),
        (1.00, 0.62, 0.78),
    ]
)
LIPS = np.array([(0.55, 0.18, 0.18), (0.85, 0.08, 0.20)])  # man, woman
MOUTH_INSIDE = np.array((0.25, 0.02, 0.04))
GLASSES = np.array((0.05, 0.05, 0.08))
SCLERA = np.array((0.97, 0.97, 0.97))


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """Per-clip variation that captions do not name: pose, scale, shirt colour, motion phase."""

    cx: float
    cy: float
    scale: float
    shirt: tuple[float, float, float]
    phase: float
    direction: float  # +1 or -1: which way a head turns, or a nod starts
    onset: int  # frame a blink or smile starts
    light: float  # vertical background gradient strength

    @classmethod
    def sample(cls, rng: np.random.Generator, num_frames: int) -> Nuisance:
        return cls(
            cx=float(rng.uniform(-0.08, 0.08)),
            cy=float(rng.uniform(-0.06, 0.06)),
            scale=float(rng.uniform(1.12, 1.28)),
            shirt=tuple(float(c) for c in rng.uniform(0.1, 0.9, size=3)),
            phase=float(rng.uniform(0, 2 * np.pi)),
            direction=float(rng.choice((-1.0, 1.0))),
            onset=int(rng.integers(1, max(2, num_frames - 3))),
            light=float(rng.uniform(-0.12, 0.12)),
        )


class Canvas:
    """A (F, H, W, 3) float image with alpha-blended, anti-aliased ellipses evaluated per frame."""

    def __init__(self, num_frames: int, size: int, background: np.ndarray) -> None:
        self.f, self.size = num_frames, size
        self.img = np.empty((num_frames, size, size, 3), dtype=np.float32)
        self.img[:] = background.astype(np.float32)
        # Normalised pixel centres and the pixel size in normalised units.
        self.coords = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2 - 1
        self.px = 2.0 / size

    def _window(self, cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> tuple[slice, slice]:
        def span(c: np.ndarray, r: np.ndarray) -> slice:
            lo = int(np.floor(((np.min(c - r) + 1) / 2) * self.size)) - 1
            hi = int(np.ceil(((np.max(c + r) + 1) / 2) * self.size)) + 1
            return slice(max(lo, 0), min(max(hi, 0), self.size))

        return span(cy, ry), span(cx, rx)

    def ellipse_alpha(self, cx, cy, rx, ry, ys: slice, xs: slice, bumps: tuple[float, int] | None = None) -> np.ndarray:
        """Coverage in [0, 1] of per-frame ellipses over the window; shape (F, h, w)."""
        cx, cy, rx, ry = (np.broadcast_to(np.asarray(v, np.float32), (self.f,)) for v in (cx, cy, rx, ry))
        dx = (self.coords[xs][None, None, :] - cx[:, None, None]) / rx[:, None, None]
        dy = (self.coords[ys][None, :, None] - cy[:, None, None]) / ry[:, None, None]
        r = np.sqrt(dx * dx + dy * dy)
        if bumps is not None:  # wavy outline for curly hair
            amp, k = bumps
            r = r / (1 + amp * np.cos(k * np.arctan2(dy, dx)))
        # (1 - r) times the smaller radius is roughly the signed distance to the outline.
        dist_px = (1 - r) * np.minimum(rx, ry)[:, None, None] / self.px
        return np.clip(dist_px + 0.5, 0.0, 1.0)

    def ellipse(self, colour, cx, cy, rx, ry, bumps=None, keep=None) -> None:
        """Paint an ellipse; ``keep(alpha, ys, xs)`` may return a modified alpha (clipping masks)."""
        grow = 1.0 + (bumps[0] if bumps else 0.0)
        ys, xs = self._window(np.asarray(cx), np.asarray(cy), np.asarray(rx) * grow, np.asarray(ry) * grow)
        if ys.start >= ys.stop or xs.start >= xs.stop:
            return
        a = self.ellipse_alpha(cx, cy, rx, ry, ys, xs, bumps)
        if keep is not None:
            a = keep(a, ys, xs)
        self.blend(a, colour, ys, xs)

    def blend(self, alpha: np.ndarray, colour, ys: slice, xs: slice) -> None:
        region = self.img[:, ys, xs]
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 1:
            colour = colour[None, None, None, :]
        delta = np.subtract(colour, region)
        delta *= alpha[..., None]
        region += delta

    def rows_above(self, y, ys: slice) -> np.ndarray:
        """(F, h, 1) soft mask of rows above per-frame y (used to cut hair fringes)."""
        y = np.broadcast_to(np.asarray(y, np.float32), (self.f,))
        d = (y[:, None, None] - self.coords[ys][None, :, None]) / self.px
        return np.clip(d + 0.5, 0.0, 1.0)


def motion_tracks(motion: str, n: Nuisance, num_frames: int) -> dict[str, np.ndarray]:
    """Per-frame controls (each shape (F,)) for the five motion kinds."""
    t = np.arange(num_frames, dtype=np.float32)
    zero, one = np.zeros_like(t), np.ones_like(t)
    tracks = {"mouth_open": 0.08 * one, "eye_open": one, "smile": zero, "head_dy": zero, "turn": zero}
    if motion == "talking":  # mouth opens and closes, period of about 5 frames
        tracks["mouth_open"] = 0.55 + 0.45 * np.sin(2 * np.pi * t / 5.0 + n.phase)
    elif motion == "blinking":  # eyes shut for two frames starting at the onset
        closed = (t >= n.onset) & (t < n.onset + 2)
        tracks["eye_open"] = np.where(closed, 0.08, 1.0).astype(np.float32)
    elif motion == "smiling":  # a smile grows from the onset over three frames
        tracks["smile"] = np.clip((t - n.onset + 1) / 3.0, 0.0, 1.0)
        tracks["mouth_open"] = 0.08 + 0.4 * tracks["smile"]
    elif motion == "nodding":  # the whole head bobs vertically
        tracks["head_dy"] = 0.11 * n.direction * np.sin(2 * np.pi * t / 8.0 + 0.3 * n.phase)
    elif motion == "turning":  # features slide sideways across the face, one direction per clip
        tracks["turn"] = n.direction * np.clip((t / max(num_frames - 1, 1)) * 2.4 - 1.2, -1.0, 1.0) * 0.16
    return tracks


def render_portrait(portrait: Portrait, nuisance: Nuisance, num_frames: int = 9, size: int = 64) -> np.ndarray:
    """Render one clip as uint8 (F, H, W, 3)."""
    bg = BACKGROUND[portrait.background]
    c = Canvas(num_frames, size, bg)
    # Vertical lighting gradient on the background: fine detail that no caption names.
    c.img *= (1 + nuisance.light * c.coords)[None, :, None, None]
    np.clip(c.img, 0, 1, out=c.img)

    tr = motion_tracks(portrait.label("motion"), nuisance, num_frames)
    s = nuisance.scale
    cx = nuisance.cx + 0.35 * tr["turn"]  # (F,)
    cy = nuisance.cy - 0.06 + tr["head_dy"]  # (F,)
    fx = cx + tr["turn"]  # facial features move further than the head outline when turning
    skin, hair = SKIN[portrait.skin], HAIR[portrait.hair_colour]
    style = portrait.label("hair_style")

    # Shoulders and shirt (colour is free nuisance).
    c.ellipse(np.array(nuisance.shirt), nuisance.cx, 1.1, 0.7 * s, 0.32 * s)
    c.ellipse(skin * 0.92, cx, cy + 0.55 * s, 0.14 * s, 0.22 * s)  # neck
    # Hair behind the head.
    if style == "long":
        c.ellipse(hair, cx, cy + 0.12 * s, 0.52 * s, 0.78 * s)
    elif style == "curly":
        c.ellipse(hair, cx, cy - 0.08 * s, 0.64 * s, 0.6 * s, bumps=(0.07, 9))
    # Face.
    c.ellipse(skin, cx + 0.3 * tr["turn"], cy, 0.40 * s, 0.50 * s)
    # Fringe: the top of a slightly larger ellipse, cut at the forehead line.
    fringe_y = cy - (0.24 if style != "short" else 0.28) * s

    def above_forehead(a: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
        return a * c.rows_above(fringe_y, ys)

    c.ellipse(hair, cx, cy - 0.02 * s, 0.44 * s, 0.55 * s, keep=above_forehead)
    # Ears for short hair.
    if style == "short":
        for side in (-1, 1):
            c.ellipse(skin * 0.9, cx + side * 0.41 * s - 0.2 * tr["turn"], cy + 0.02 * s, 0.06 * s, 0.11 * s)

    # Eyes: sclera, iris, pupil; eyelids close by shrinking the vertical radius.
    eye_y = cy - 0.08 * s
    eye_open = tr["eye_open"]
    for side in (-1, 1):
        ex = fx + side * 0.17 * s
        c.ellipse(hair * 0.8, ex, eye_y - 0.13 * s, 0.09 * s, 0.025 * s)  # eyebrow
        ry = 0.075 * s * eye_open
        c.ellipse(SCLERA, ex, eye_y, 0.095 * s, ry)
        c.ellipse(EYES[portrait.eye_colour], ex, eye_y, 0.055 * s, np.minimum(0.055 * s, ry))
        c.ellipse(np.zeros(3), ex, eye_y, 0.022 * s, np.minimum(0.022 * s, ry))
        shut = eye_open < 0.5
        if shut.any():  # closed lid line in skin-dark
            c.ellipse(skin * 0.55, ex, eye_y, np.where(shut, 0.1 * s, 1e-3), np.where(shut, 0.016 * s, 1e-3))
        if portrait.glasses:
            c.ellipse(GLASSES, ex, eye_y, 0.15 * s, 0.12 * s, keep=_ring(c, ex, eye_y, 0.115 * s, 0.085 * s))
    if portrait.glasses:
        c.ellipse(GLASSES, fx, eye_y - 0.01 * s, 0.05 * s, 0.018 * s)  # bridge

    # Nose.
    c.ellipse(skin * 0.8, fx, cy + 0.07 * s, 0.035 * s, 0.07 * s)
    # Mouth: lips then the open interior; a smile widens it and cuts the top into a crescent.
    my = cy + 0.26 * s
    smile, mouth_open = tr["smile"], tr["mouth_open"]
    rx = 0.12 * s * (1 + 0.7 * smile)
    ry_in = 0.012 + 0.10 * s * mouth_open
    lips = LIPS[portrait.gender]
    cut_y = my - ry_in + 0.6 * smile * ry_in

    def below_cut(a: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
        return a * (1 - c.rows_above(cut_y - 0.03 * s * smile, ys))

    c.ellipse(lips, fx, my, rx + 0.025 * s, ry_in + 0.03 * s, keep=below_cut)
    c.ellipse(MOUTH_INSIDE, fx, my, rx, ry_in, keep=below_cut)
    return (np.clip(c.img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _ring(c: Canvas, cx, cy, rx_in, ry_in):
    """Clip mask that removes the inside of an ellipse (turns a disc into a glasses rim)."""

    def keep(a: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
        return a * (1 - c.ellipse_alpha(cx, cy, rx_in, ry_in, ys, xs))

    return keep


def render_clip(portrait: Portrait, seed: int, num_frames: int = 9, size: int = 64) -> np.ndarray:
    """Deterministic clip for (portrait, seed): uint8 (F, H, W, 3)."""
    if num_frames < 1 or size < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got num_frames={num_frames}, size={size}")
    rng = np.random.default_rng(seed)
    return render_portrait(portrait, Nuisance.sample(rng, num_frames), num_frames, size)
