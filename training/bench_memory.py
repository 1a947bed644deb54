"""Training memory per step: full fine-tune vs W2SVD (LoRA roles) vs DMD with full copies (and DMD-LoRA, LCM).

python training/bench_memory.py [--size tiny|embedded] [--steps 3] [--device cpu|cuda]

Each case builds its method from the shipped configs on a randomly initialised base of the chosen size and
runs ``--steps`` training steps exactly as w2svd.trainer does (every phase: loss, backward, clip,
AdamW step, zero_grad(set_to_none)), in a fresh subprocess. CPU: resident memory from /proc and
resource.getrusage (peak reset with /proc/self/clear_refs after building); CUDA: torch.cuda allocator
counters. Then prints HunyuanVideo-13B's per-GPU plan from ``w2svd.memory`` (the planner that
training/bench_memory_13b.py validates against measured 13B-width steps).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing
CONFIGS = ROOT / "training" / "configs"
CASES = ("full-finetune", "w2svd-lora", "w2svd-lora-gt", "dmd-lora", "dmd-copies", "lcm-lora")
MiB = 2**20


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def case_config(case: str, size: str, cache_dir: str, overrides: dict | None = None) -> dict:
    """A TrainConfig dict for ``case`` at ``size``: tiny_w2svd.yaml, or the embedded configs with a random init.

    ``overrides`` may replace ``random_base``, ``data`` and ``batch_size`` (training/bench_gpu.py's larger shapes).
    """
    overrides = overrides or {}
    if size == "tiny":
        run = load_yaml("tiny_w2svd.yaml")
        method = run["method"]
        random_base = method["random_base"]
    else:
        run = load_yaml("embedded_w2svd.yaml")
        method = run["method"]
        teacher = load_yaml("embedded_teacher.yaml")["method"]
        vae = load_yaml("embedded_vae.yaml")["method"]["model"]
        random_base = {"vae_init": vae, "text": teacher["text"], "transformer": teacher["transformer"]}
    random_base = overrides.get("random_base", random_base)
    run = {**run, **{k: overrides[k] for k in ("data", "batch_size") if k in overrides}}
    common = {"cache_dir": cache_dir, "cache_clips": run["batch_size"], "val_prompts": 1}
    dmd = {**method, **common, "random_base": random_base, "fake_updates_per_generator_update": 1}
    lora = {"rank": method["generator_rank"], "lora_alpha": method["generator_lora_alpha"]}
    methods = {
        "full-finetune": {"name": "flow_matching", **random_base, **common, "shift": method.get("noise_shift", 3.0)},
        "w2svd-lora": dmd,  # the shipped config (lambda_gt 0 on the embedded model)
        "w2svd-lora-gt": {**dmd, "lambda_gt": 0.5},  # with the ground-truth term: a second graph in the fake phase
        "dmd-lora": {**dmd, "alpha_weak": 0.0, "lambda_gt": 0.0},
        "dmd-copies": {**dmd, "roles": "copies", "alpha_weak": 0.0, "lambda_gt": 0.0},
        "lcm-lora": {"name": "lcm", "random_base": random_base, **common, **lora, "ema_decay": 0.95},
    }
    return {
        "method": methods[case],
        "output_dir": str(Path(cache_dir) / "run"),
        "batch_size": run["batch_size"],
        "data": run["data"],
        "optim": run.get("optim", {}),
        "max_steps": 10,
    }


def hunyuan_slice(
    double: int, single: int, frames: int, size: int, refiner: int = 1, heads: int = 24, text: tuple = (4096, 768)
) -> dict:
    """Overrides for bench_memory.case_config: HunyuanVideo-13B's width, fewer blocks, small encoders and VAE.

    ``heads`` (of 128 channels: 24 in 13B) and ``text`` (the Llama and CLIP widths) shrink it for tests.
    """
    return {
        "random_base": {
            "vae_init": {
                "latent_channels": 16,
                "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
                "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
                "block_out_channels": [16, 16, 32, 32],
                "layers_per_block": 1,
                "norm_num_groups": 8,
                "spatial_compression_ratio": 8,
                "temporal_compression_ratio": 4,
            },
            "text": {
                "seed": 0,
                "vocab_size": 1024,
                "llama": {
                    "hidden_size": text[0],
                    "intermediate_size": 256,
                    "num_hidden_layers": 3,
                    "num_attention_heads": 32,
                    "num_key_value_heads": 8,
                    "max_position_embeddings": 512,
                },
                "clip": {
                    "hidden_size": text[1],
                    "intermediate_size": 256,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 12 if text[1] % 12 == 0 else 4,
                    "max_position_embeddings": 77,
                },
            },
            "transformer": {
                "in_channels": 16,
                "out_channels": 16,
                "num_attention_heads": heads,
                "attention_head_dim": 128,
                "num_layers": double,
                "num_single_layers": single,
                "num_refiner_layers": refiner,
                "mlp_ratio": 4.0,
                "patch_size": 2,
                "patch_size_t": 1,
                "guidance_embeds": True,
                "text_embed_dim": text[0],
                "pooled_projection_dim": text[1],
                "rope_axes_dim": [16, 56, 56],
            },
        },
        "data": {"num_frames": frames, "size": size},
        "batch_size": 1,
    }


# ---- one case, in its own process ----------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset the peak-RSS counter (Linux >= 4.0); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap to the OS so RSS counts live memory
    except OSError:
        pass


def run_case(case: str, size: str, steps: int, device_name: str, overrides: dict | None = None) -> dict:
    import torch

    from w2svd.config import from_dict
    from w2svd.trainer import build_method, make_optimizers
    from w2svd.training.config import TrainConfig

    torch.set_num_threads(1)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = from_dict(TrainConfig, case_config(case, size, tmp, overrides))
        release_free_memory()
        start = torch.cuda.memory_allocated() if cuda else rss_bytes()
        torch.manual_seed(0)
        method = build_method(cfg, device)
        groups = method.param_groups()
        o = cfg.optim
        optimizers = make_optimizers(groups, o)
        method.train(True)
        release_free_memory()
        if cuda:
            torch.cuda.synchronize()
            built = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            reset = True
        else:
            built, reset = rss_bytes(), reset_peak()
        phases, step_seconds = [], []
        for step in range(steps):  # as w2svd.trainer.train does it
            t_step = time.perf_counter()
            batch = method.batch(step)
            for phase in method.phases(step):
                method.arm(phase)
                loss, _ = method.loss(phase, batch)
                method.arm(phase)
                loss.backward()
                if o.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(groups[phase][0], o.grad_clip)
                optimizers[phase].step()
                optimizers[phase].zero_grad(set_to_none=True)
                method.after_step(phase)
                phases.append(phase)
            if cuda:
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - t_step)
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        trainable = {id(p): p.numel() for params, _ in groups.values() for p in params}
        modules = [method.transformer, *getattr(getattr(method, "roles", None), "modules", {}).values()]
        held = {id(p): p.numel() for m in modules for p in m.parameters()}
        return {
            "case": case,
            "trainable_params": sum(trainable.values()),
            "transformer_params_held": sum(held.values()),
            "start": start,
            "built": built,
            "peak": max(peak, built),
            "peak_reset": reset,
            "phases": sorted(set(phases)),
            "step_seconds": step_seconds,  # each step runs every phase once (fake score + generator)
        }


# ---- the tables --------------------------------------------------------------------------------------
def measure(size: str, steps: int, device: str) -> list[dict]:
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for case in CASES:
        cmd = [sys.executable, __file__, "--child", case, "--size", size, "--steps", str(steps), "--device", device]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"case {case} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  measured {case}", file=sys.stderr)
    return rows


def print_measured(rows: list[dict], size: str, steps: int, device: str) -> None:
    ref = rows[0]
    ref_total, ref_step = ref["peak"] - ref["start"], ref["peak"] - ref["built"]
    print(f"\nMeasured training memory, {size} model, {steps} steps per case, {device}, 1 thread")
    print("(models = after building pipeline, latent cache, method and optimisers, minus before; step = peak during")
    print(" the steps minus after building: gradients, AdamW states, activations; total = peak minus before)\n")
    print(
        "| case | trainable params | transformer params held | models MiB | step MiB | total MiB "
        "| step / FT | total / FT |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        step, total = r["peak"] - r["built"], r["peak"] - r["start"]
        print(
            f"| {r['case']} | {r['trainable_params']:,} | {r['transformer_params_held']:,} | "
            f"{(r['built'] - r['start']) / MiB:.1f} | {step / MiB:.1f} | {total / MiB:.1f} | "
            f"{step / max(ref_step, 1):.2f} | {total / max(ref_total, 1):.2f} |"
        )
    if not all(r["peak_reset"] for r in rows):
        print("\nwarning: the peak counter could not be reset; step peaks include the build peak")


def print_analytic(rank: int) -> None:
    """HunyuanVideo-13B per GPU from the validated planner ``w2svd.memory`` (one model for every table)."""
    from w2svd.memory import GiB, count_transformer, estimate, tokens_per_clip

    counts = count_transformer({})  # diffusers' defaults: the 13B transformer (meta device)
    tokens = tokens_per_clip(counts, {"spatial": 8, "temporal": 4}, 61, 544, 960, 256)
    print(
        f"\nHunyuanVideo-13B ({counts.transformer / 1e9:.2f} B params), 61x544x960 ({tokens:,} tokens with 256 text), "
        f"batch 1 per GPU, rank {rank}; w2svd.memory (planner fitted to training/bench_memory_13b.py, "
        "docs/memory/README.md). GiB per GPU: 1 GPU unsharded / 8 GPUs FSDP2.\n"
    )
    print("| method | checkpointing | weights | gradients | AdamW | activations | AdamW temporaries | total |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [("W2SVD (lambda_gt 0.5)", "w2svd", 0.5), ("W2SVD or DMD, LoRA fake score (lambda_gt 0)", "w2svd", 0.0)]
    cases.append(("DMD with full copies (DMD2 / FastVideo)", "dmd-copies", 0.0))
    for name, method, gt in cases:
        for ckpt in (False, True):
            one = estimate(counts, tokens, method, 1, 1, rank, "none", ckpt, False, gt)
            eight = estimate(counts, tokens, method, 8, 1, rank, "fsdp", ckpt, False, gt)
            cells = [
                f"{getattr(one, part) / GiB:.1f} / {getattr(eight, part) / GiB:.1f}"
                for part in ("weights", "gradients", "optimizer", "activations", "temporaries", "total")
            ]
            print(f"| {name} | {'on' if ckpt else 'off'} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "embedded"), default="tiny", help="tiny_w2svd.yaml or embedded configs")
    ap.add_argument("--steps", type=int, default=3, help="training steps per case (each has every phase)")
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--rank", type=int, default=64, help="LoRA rank for the 13B plan table")
    ap.add_argument("--no-measure", action="store_true", help="print only the 13B plan table (w2svd.memory)")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(args.child, args.size, args.steps, args.device)))
        return 0
    if not args.no_measure:
        print_measured(measure(args.size, args.steps, args.device), args.size, args.steps, args.device)
    print_analytic(args.rank)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
