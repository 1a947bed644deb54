"""Step time and peak memory of W2SVD vs DMD with full copies, and 4- vs 28-step denoising, at a chosen shape.

python training/bench_gpu.py [--size tiny|embedded|hunyuan-slice] [--double 2 --single 4] [--steps 3]

Meant for a lent GPU (CUDA allocator peaks, synchronised timings) and runs on CPU at tiny size. Every model
is randomly initialised from a config, so nothing is downloaded:

- tiny / embedded: the shapes of training/configs/tiny_w2svd.yaml and the shipped embedded model;
- hunyuan-slice: HunyuanVideo-13B's width (24 heads x 128, 16 latent channels, 4096-d text tokens, guidance
  embedding) with ``--double``/``--single`` blocks instead of 20/40, on ``--frames`` x ``--size`` clips.

Training: each case runs ``--steps`` steps of every phase (fake score + generator, ratio 1) exactly as the
training loop does, in its own process (training/bench_memory.py's child), fp32; the first step is a warm-up
and not timed. Generation: ``sample_euler`` with 4 and 28 sigmas on one clip, denoising only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

MiB = 2**20
CASES = ("w2svd-lora", "dmd-copies")


def shape_overrides(args: argparse.Namespace) -> dict | None:
    from bench_memory import hunyuan_slice

    if args.size == "hunyuan-slice":
        return hunyuan_slice(args.double, args.single, args.frames, args.pixels)
    return None


# ---- children ------------------------------------------------------------------------------------
def train_child(case: str, args: argparse.Namespace) -> dict:
    from bench_memory import run_case

    size = "tiny" if args.size == "tiny" else "embedded"
    return run_case(case, size, args.steps + 1, args.device, shape_overrides(args))


def generate_child(args: argparse.Namespace) -> dict:
    import torch
    from bench_memory import case_config

    from w2svd.backbones import backbone_for
    from w2svd.methods.flow_matching import FlowMatchingConfig, build_embedded_pipeline
    from w2svd.sampling import get_sigmas, sample_euler

    size = "tiny" if args.size == "tiny" else "embedded"
    cfg = case_config("w2svd-lora", size, "/nonexistent", shape_overrides(args))
    rb, data = cfg["method"]["random_base"], cfg["data"]
    device = torch.device(args.device)
    pipe = build_embedded_pipeline(FlowMatchingConfig(**rb)).to(device)
    backbone = backbone_for(pipe)
    cond = backbone.encode_prompts(["a woman with long red hair and green eyes talking, blue background"])
    shape = backbone.latent_shape(data["num_frames"], data["size"], data["size"])
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device)

    def velocity(x, s):
        return backbone.velocity(x, s, cond)

    def timed(steps: int) -> float:
        sigmas = get_sigmas(steps, 5.0).to(device)
        with torch.no_grad():
            sample_euler(velocity, noise, sigmas)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.repeats):
                sample_euler(velocity, noise, sigmas)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.repeats

    c, f, h, w = shape
    tokens = f * (h // 2) * (w // 2)
    return {"latent_shape": list(shape), "tokens": tokens, "denoise_4": timed(4), "denoise_28": timed(28)}


# ---- parent --------------------------------------------------------------------------------------
def child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, *args.forward]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  done: {mode}", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def report(args: argparse.Namespace, train: dict[str, dict], gen: dict) -> str:
    shape = {"tiny": "tiny_w2svd.yaml", "embedded": "embedded model"}.get(
        args.size, f"HunyuanVideo-13B width, {args.double} double + {args.single} single blocks"
    )
    lines = [
        f"Device: {device_name(args.device)}; shape: {shape}; fp32; {args.steps} timed steps per case",
        "",
        "| case | trainable params | transformer params held | s / step (fake + generator) | peak MiB "
        "| peak / copies |",
        "|---|---|---|---|---|---|",
    ]
    copies = train["dmd-copies"]
    for case, r in train.items():
        timed = r["step_seconds"][1:]  # the first step is a warm-up
        peak = r["peak"] - r["start"]
        lines.append(
            f"| {case} | {r['trainable_params']:,} | {r['transformer_params_held']:,} | "
            f"{sum(timed) / len(timed):.3f} | {peak / MiB:.0f} | {peak / (copies['peak'] - copies['start']):.2f} |"
        )
    lines += [
        "",
        f"Generation, one clip, latents {gen['latent_shape']} ({gen['tokens']:,} video tokens), denoising only:",
        f"4 steps {gen['denoise_4']:.3f} s, 28 steps {gen['denoise_28']:.3f} s, "
        f"ratio {gen['denoise_28'] / gen['denoise_4']:.2f}x (NFE limit 7x)",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "embedded", "hunyuan-slice"), default="tiny")
    ap.add_argument("--double", type=int, default=2, help="double-stream blocks (hunyuan-slice; 13B has 20)")
    ap.add_argument("--single", type=int, default=4, help="single-stream blocks (hunyuan-slice; 13B has 40)")
    ap.add_argument("--frames", type=int, default=33, help="clip frames (hunyuan-slice), 4k+1")
    ap.add_argument("--pixels", type=int, default=256, help="clip height = width in pixels (hunyuan-slice)")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per case (+1 warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="timed generations per step count")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the measured figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.forward = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        result = generate_child(args) if args.child == "generate" else train_child(args.child, args)
        print(json.dumps(result))
        return 0
    if args.steps < 1:
        raise SystemExit(f"--steps={args.steps} must be >= 1")
    train = {case: child(case, args) for case in CASES}
    gen = child("generate", args)
    text = report(args, train, gen)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(args.device), "train": train, "generate": gen}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
