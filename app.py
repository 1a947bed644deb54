"""Gradio demo: W2SVD few-step video next to the base model's many-step video (README, "The demo app")."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


def device_name(text: str) -> str:
    """A torch device name, checked without importing torch: main() imports ``spaces`` before torch on ZeroGPU."""
    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (e.g. cuda, cuda:1, cpu)")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="W2SVD demo. Serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860)."
    )
    p.add_argument(
        "--base",
        default=os.environ.get("W2SVD_BASE", "embedded"),
        help="base model: 'embedded', a diffusers pipeline folder or a Hub repo id (env W2SVD_BASE; default embedded)",
    )
    p.add_argument(
        "--lora",
        default=os.environ.get("W2SVD_LORA"),
        help="W2SVD LoRA(s): 'embedded', 'embedded-1step', a folder, a .safetensors file, a Hub repo id, a "
        "comma-separated list of them (one per step count), or 'none' (env W2SVD_LORA; default: the shipped "
        "embedded LoRAs when the base is embedded, else none)",
    )
    p.add_argument(
        "--device",
        type=device_name,
        default=None,
        help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)",
    )
    p.add_argument("--cpu-offload", action="store_true", help="CUDA only: diffusers model CPU offload (less memory)")
    p.add_argument(
        "--max-videos", type=positive_int, default=64, help="mp4 files kept in the app's temp folder (default 64)"
    )
    p.add_argument(
        "--seconds-per-step",
        type=positive_float,
        default=3.0,
        help="ZeroGPU lease estimate per sampling step (default 3)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from w2svd.app_utils import import_spaces

    import_spaces()  # before anything touches CUDA: on ZeroGPU Spaces this is what makes CUDA visible
    import torch

    from w2svd.app_utils import LoadError, VideoStore, choose_lora, load_generator, on_zero_gpu
    from w2svd.demo import CSS, MAX_UPLOAD, DemoHandlers, build_blocks

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lora, no_lora_reason = choose_lora(args.base, args.lora)
    try:
        generator = load_generator(args.base, lora, device, args.cpu_offload)
    except LoadError as e:
        sys.exit(f"app.py: error: {e}")
    if lora is None:
        print(f"app.py: no W2SVD LoRA loaded ({no_lora_reason}); the few-step side is plain Euler on the base")
    # SIGTERM (docker stop, a Space restart) unwinds like Ctrl-C, so the temporary folder below is removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="w2svd-app-") as tmp:
        # Lazily cached examples live as long as this process, so they never outlive the models that made them.
        os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(Path(tmp) / "examples"))
        handlers = DemoHandlers(
            generator,
            VideoStore(Path(tmp) / "videos", args.max_videos),
            base_name=args.base,
            lora_name=lora,
            no_lora_reason=no_lora_reason,
            seconds_per_step=args.seconds_per_step,
        )
        if not on_zero_gpu():  # on ZeroGPU there is no GPU outside a request
            handlers.warm_up()
        build_blocks(handlers).launch(css=CSS, allowed_paths=[tmp], show_error=True, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
