"""A folder of real videos with captions: discovery, caption files, frame sampling, aspect buckets."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".mov")


class VideoError(ValueError):
    """A video that cannot be used: unreadable, corrupt, or too short; the message says why."""


def find_videos(folder: str | Path) -> list[str]:
    """Video files under ``folder`` (recursive), as sorted POSIX paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--videos {str(folder)!r} is not a folder; pass the folder holding the clips")
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS]
    return sorted(p.relative_to(folder).as_posix() for p in found)


def read_captions(path: str | Path) -> dict[str, str]:
    """{file: caption} from a JSONL file of {"file", "caption"} objects or a CSV with 'file' and 'caption' columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--captions {str(path)!r} does not exist; pass a .jsonl or .csv file, or omit it")
    captions: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"file", "caption"} <= set(reader.fieldnames or []):
                raise ValueError(f"{path}: the CSV header {reader.fieldnames} must include 'file' and 'caption'")
            for row in reader:
                captions[row["file"].strip()] = row["caption"].strip()
        return captions
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[str(row["file"]).strip()] = str(row["caption"]).strip()
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f'{path}:{n}: expected a JSON object with "file" and "caption", got {line[:80]!r}') from e
    return captions


def caption_for(folder: Path, rel: str, captions: dict[str, str]) -> str | None:
    """The caption of ``rel``: from the caption file (by relative path, then file name), else a .txt sidecar."""
    text = captions.get(rel) or captions.get(Path(rel).name)
    if text is None:
        sidecar = (folder / rel).with_suffix(".txt")
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8").strip()
    return text or None


def parse_buckets(text: str) -> list[tuple[int, int]]:
    """'544x960,960x544' -> [(544, 960), (960, 544)]: resolution buckets as (height, width)."""
    buckets = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"bucket {item!r} must look like HEIGHTxWIDTH, e.g. --buckets 544x960,960x544") from None
        if h <= 0 or w <= 0:
            raise ValueError(f"bucket {item!r} must have a positive height and width")
        buckets.append((h, w))
    if not buckets:
        raise ValueError("--buckets is empty; give at least one HEIGHTxWIDTH")
    return buckets


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log scale) to the video's; ties go to the larger bucket."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - ratio), -b[0] * b[1]))


def _last_line(error: BaseException) -> str:
    """The last line of ffmpeg's message (the cause), without quotes; the error's repr if it is empty."""
    text = str(error).strip().strip("'\"").strip()
    return text.splitlines()[-1] if text else repr(error)


def probe(path: str | Path) -> tuple[int, int, float]:
    """(height, width, fps) from the container header, without decoding frames."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration) as e:
        raise VideoError(f"unreadable video: {_last_line(e)}") from e
    width, height = meta.get("size") or (0, 0)
    fps = float(meta.get("fps") or 0)
    if not width or not height or fps <= 0:
        raise VideoError(f"no video stream (size {meta.get('size')}, fps {meta.get('fps')})")
    return int(height), int(width), fps


def resize_crop(frame: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """Scale (H, W, 3) uint8 to cover ``bucket`` = (height, width), then centre-crop to it."""
    bh, bw = bucket
    h, w = frame.shape[:2]
    scale = max(bh / h, bw / w)
    nh, nw = max(bh, round(h * scale)), max(bw, round(w * scale))
    img = Image.fromarray(frame).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - bh) // 2, (nw - bw) // 2
    return np.asarray(img.crop((left, top, left + bw, top + bh)))


def read_clip(path: str | Path, num_frames: int, fps: float, bucket: tuple[int, int]) -> np.ndarray:
    """``num_frames`` frames from the start of the video at ``fps``, resized and centre-cropped: (F, H, W, 3) uint8.

    Frame k is the source frame nearest to time k / fps (frames repeat when the source is slower).
    """
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        src_fps = float(meta["fps"])
        wanted = [round(k * src_fps / fps) for k in range(num_frames)]
        frames: list[np.ndarray] = []
        index = -1
        for index, raw in enumerate(reader):
            if index > wanted[-1]:
                break
            if index in wanted:
                frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
                frames.extend([resize_crop(frame, bucket)] * wanted.count(index))
        reader.close()
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as e:
        raise VideoError(f"unreadable video: {_last_line(e)}") from e
    if len(frames) < num_frames:
        raise VideoError(
            f"too short: {index + 1} frames at {src_fps:g} fps, need {num_frames} frames at {fps:g} fps "
            f"({(num_frames - 1) / fps:.2f} s)"
        )
    return np.stack(frames)
