"""The demo app's reusable parts: model loading policy, mp4 writing, a bounded video folder, stats text."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from w2svd.eval.temporal import summarise
from w2svd.hub import EMBEDDED, EMBEDDED_LORAS
from w2svd.pipeline import GenerationResult, VideoGenerator

NO_LORA = ("none", "")  # --lora values that mean "run without a distilled LoRA"


class LoadError(RuntimeError):
    """A base or LoRA that was asked for but could not be loaded; the message says what to do."""


# ---- loading ------------------------------------------------------------------------------------
def choose_lora(base: str, lora: str | None) -> tuple[str | None, str]:
    """(LoRA to load or None, why none) for the app's ``--lora``; None means 'the default'.

    The default is the embedded LoRAs (4-step, and 1-step once shipped) when the base is the embedded one and
    they have shipped; otherwise the app runs without a LoRA and says why. An explicit name (or a comma-separated
    list of names, one LoRA per step count) is always loaded (or fails).
    """
    if lora is not None:
        if lora.strip().lower() in NO_LORA:
            return None, "--lora / W2SVD_LORA is 'none'"
        return lora.strip(), ""
    if base != "embedded":
        return None, f"no LoRA given for base {base!r} (pass --lora or set W2SVD_LORA)"
    if not EMBEDDED["lora"].exists():
        return None, f"the embedded W2SVD LoRA has not shipped yet ({EMBEDDED['lora']} is missing)"
    return ",".join(name for name, path in EMBEDDED_LORAS.items() if path.exists()), ""


def load_generator(base: str, lora: str | None, device: str, cpu_offload: bool = False) -> VideoGenerator:
    """The VideoGenerator for the app: bf16, VAE tiling and optional model CPU offload on CUDA."""
    cuda = device.startswith("cuda")
    if cpu_offload and not cuda:
        raise LoadError(f"--cpu-offload needs a CUDA device, not --device {device}")
    dtype = torch.bfloat16 if cuda else torch.float32
    try:
        generator = VideoGenerator.from_pretrained(base, device="cpu" if cpu_offload else device, dtype=dtype)
    except Exception as e:  # missing, unreachable or unreadable: name it, keep the cause, say how to fix it
        raise LoadError(
            f"could not load the base model {base!r}: {e}\n"
            "Pass --base (or W2SVD_BASE) as 'embedded', a local diffusers pipeline folder, or a Hub repo id "
            "such as hunyuanvideo-community/HunyuanVideo."
        ) from e
    for i, name in enumerate(n.strip() for n in (lora or "").split(",") if n.strip()):
        try:
            generator.load_lora(name, add=i > 0)
        except Exception as e:
            raise LoadError(
                f"could not load the W2SVD LoRA {name!r} into base {base!r}: {e}\n"
                "Pass --lora (or W2SVD_LORA) as a folder with pytorch_lora_weights.safetensors exported by w2svd, "
                "the file itself, a Hub repo id, or 'none' to run the base alone."
            ) from e
    if cuda:
        generator.pipe.vae.enable_tiling()
        if cpu_offload:
            generator.fuse = False  # offload hooks move the weights between devices: keep the LoRA unfused
            enable_cpu_offload(generator.pipe, device)
    return generator


def enable_cpu_offload(pipe, device: str) -> None:
    """diffusers' model CPU offload, keeping the VAE resident on ``device``.

    The backbone moves latents to ``vae.device`` before calling ``decode``; with the VAE offloaded that
    is the CPU while the offload hook then moves the VAE to the GPU, so the VAE stays on the GPU instead.
    """
    from accelerate.hooks import remove_hook_from_module

    pipe.enable_model_cpu_offload(device=device)
    remove_hook_from_module(pipe.vae, recurse=True)
    pipe.vae.to(device)


def import_spaces():
    """The ``spaces`` package, imported before anything touches CUDA (ZeroGPU needs that), or None."""
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def on_zero_gpu() -> bool:
    """True on a Hugging Face ZeroGPU Space, where CUDA work may only run inside ``spaces.GPU`` functions."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def spaces_gpu(fn: Callable, duration: Callable) -> Callable:
    """``spaces.GPU(fn, duration=duration)``: a GPU lease per call on ZeroGPU, ``fn`` itself elsewhere."""
    spaces = import_spaces()
    return fn if spaces is None else spaces.GPU(fn, duration=duration)


# ---- videos -------------------------------------------------------------------------------------
def display_scale(height: int, width: int, display_size: int = 256) -> int:
    """Integer nearest-neighbour upscale that brings the longer side up to ``display_size`` (never down)."""
    return max(1, display_size // max(height, width))


def upscale_nearest(frames: np.ndarray, scale: int) -> np.ndarray:
    """(F, H, W, 3) -> (F, H*scale, W*scale, 3) by pixel repetition."""
    return frames if scale == 1 else frames.repeat(scale, axis=1).repeat(scale, axis=2)


def write_video(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Browser-playable H.264 / yuv420p mp4 from uint8 (F, H, W, 3) frames (odd sizes padded by one pixel)."""
    from moviepy import ImageSequenceClip

    f, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p needs even sizes
    clip = ImageSequenceClip(list(frames), fps=fps)
    clip.write_videofile(str(path), codec="libx264", audio=False, logger=None, ffmpeg_params=["-pix_fmt", "yuv420p"])
    clip.close()
    return Path(path)


def release_memory() -> None:
    """Return freed heap pages to the OS after a request (glibc keeps them otherwise, so RSS creeps up)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


class VideoStore:
    """mp4 files in one folder, keeping only the newest ``max_files`` (older ones are deleted)."""

    def __init__(self, folder: str | Path, max_files: int = 64) -> None:
        if max_files < 2:
            raise ValueError(f"max_files={max_files} must be >= 2 (one request writes two videos)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_files = max_files
        self._lock = threading.Lock()
        self._count = 0

    def write(self, frames: np.ndarray, fps: int, tag: str) -> Path:
        with self._lock:
            self._count += 1
            path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._count:06d}-{tag}.mp4"
        write_video(frames, path, fps)
        self.prune()
        return path

    def prune(self) -> None:
        with self._lock:
            files = sorted(self.folder.glob("*.mp4"), key=lambda p: (p.stat().st_mtime_ns, p.name))
            for old in files[: max(0, len(files) - self.max_files)]:
                old.unlink(missing_ok=True)


# ---- stats --------------------------------------------------------------------------------------
@dataclasses.dataclass
class SideStats:
    """What one side of the comparison reports (also the API's stats, via ``dataclasses.asdict``)."""

    label: str
    steps: int
    nfe: int
    seconds: float  # end to end: text encoding, denoising, VAE decoding
    denoise_seconds: float
    sigmas: list[float]
    motion: float  # mean grey-level change between consecutive frames (w2svd.eval.temporal)
    flicker: float  # mean absolute second difference over time: jitter, not smooth motion

    @classmethod
    def of(cls, label: str, result: GenerationResult) -> SideStats:
        steps = len(result.sigmas) - 1  # NFE is twice this under classifier-free guidance
        t = summarise(result.frames) if result.frames.shape[1] >= 3 else {"motion": 0.0, "flicker": 0.0}
        return cls(
            label, steps, result.nfe, result.total_seconds, result.denoise_seconds, result.sigmas,
            round(t["motion"], 3), round(t["flicker"], 3),
        )  # fmt: skip


def speedup(few: SideStats, baseline: SideStats | None) -> float | None:
    """Baseline wall time over few-step wall time (end to end), or None without a baseline."""
    if baseline is None or few.seconds <= 0:
        return None
    return baseline.seconds / few.seconds


def stats_markdown(side: SideStats, baseline: SideStats | None = None) -> str:
    """One line under a video: seconds and NFE; given the baseline, the speed-up over it."""
    text = f"**{side.seconds:.2f} s** ({side.denoise_seconds:.2f} s denoising) · **{side.nfe} NFE**"
    text += f" · motion {side.motion:.2f}, flicker {side.flicker:.2f}"
    ratio = speedup(side, baseline)
    if ratio is None:
        return text
    denoise = baseline.denoise_seconds / max(side.denoise_seconds, 1e-9)
    return text + f" · **{ratio:.1f}x faster** than the baseline ({denoise:.1f}x in denoising)"


def stats_dict(prompt: str, seed: int, few: SideStats, baseline: SideStats | None, video: dict, models: dict) -> dict:
    """The API's stats: both sides, the speed-up (None without a baseline), video format and models."""
    return {
        "prompt": prompt,
        "seed": seed,
        "few_step": dataclasses.asdict(few),
        "baseline": None if baseline is None else dataclasses.asdict(baseline),
        "speedup": speedup(few, baseline),
        "video": video,
        "models": models,
    }
