"""Sample clips as one image: rows of frames, with captions (the data CLI, validation and the benchmark use it)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def grid_image(clips: np.ndarray, captions: list[str] | None = None, zoom: int = 2) -> Image.Image:
    """Rows of frames (one clip per row), optionally with the caption under each row."""
    n, f, h, w, _ = clips.shape
    rows = np.concatenate([np.concatenate(list(c), axis=1) for c in clips], axis=0)
    img = Image.fromarray(rows).resize((f * w * zoom, n * h * zoom), Image.NEAREST)
    if not captions:
        return img
    line = 14
    out = Image.new("RGB", (img.width, n * (h * zoom + line)), "white")
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(captions):
        y = i * (h * zoom + line)
        out.paste(img.crop((0, i * h * zoom, img.width, (i + 1) * h * zoom)), (0, y))
        draw.text((2, y + h * zoom + 1), text, fill="black")
    return out
