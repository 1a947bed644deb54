"""Helpers for the app tests: a tiny W2SVD LoRA with non-zero weights, and app.py served on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_LORA_META = {
    "sigmas_by_steps": {"2": [1.0, 0.75, 0.0], "4": [1.0, 0.9, 0.75, 0.5, 0.0]},
    "default_steps": 4,
    "guidance_scale": 1.0,
    "renoise": True,
}


def export_tiny_lora(pipeline_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """A rank-4 LoRA on the tiny transformer with random non-zero lora_B (so it changes outputs), w2svd format."""
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    from w2svd.backbones import HunyuanVideoBackbone
    from w2svd.lora import lora_config, save_lora

    transformer = HunyuanVideoTransformer3DModel.from_pretrained(pipeline_dir / "transformer")
    transformer.add_adapter(lora_config(4, 4, HunyuanVideoBackbone.lora_target_regex), adapter_name="generator")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    from w2svd.generator_meta import GeneratorMeta

    meta = {**TINY_LORA_META, "base_model": str(pipeline_dir)}  # the base it is loaded into (checked on load)
    save_lora(transformer, "generator", out_dir, GeneratorMeta.from_dict(meta, "tiny"), HunyuanVideoPipeline)
    return out_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: list[str], env: dict[str, str], log: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Run ``python app.py ARGS`` on a free port; (process, url) once the page answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), **env}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_app(proc)
    raise RuntimeError(f"app.py did not answer within {timeout} s:\n{log.read_text()[-4000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_mp4(path: str | Path) -> tuple[list, dict]:
    """(frames, ffmpeg metadata) of an mp4, decoded with imageio-ffmpeg."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path), format="ffmpeg") as reader:
        return [frame for frame in reader], reader.get_meta_data()
