"""Crash test: SIGKILL a training run at random moments, re-run the same command, compare with an uninterrupted run.

python training/kill_resume.py [--runs 5] [--config training/configs/tiny_w2svd.yaml] [--out /tmp/w2svd-kill]

Each run kills `training/run.py` with SIGKILL after a random delay (possibly during a checkpoint write), then
re-runs the same command until it finishes (killing again with some probability), and checks that the final
LoRA is bitwise identical to the uninterrupted run's. Prints how many runs survived.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]


def command(config: str, out: Path, cache: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "training" / "run.py"),
        "--config",
        config,
        f"output_dir={out}",
        f"method.cache_dir={cache}",
        "checkpoint_every=1",
        "--no-progress",
        *extra,
    ]


def run_to_completion(cmd: list[str], rng: random.Random, kills: int, max_delay: float, env: dict) -> int:
    """Run cmd, SIGKILLing it up to ``kills`` times after random delays; return the number of kills done."""
    done = 0
    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        if done < kills:
            try:
                proc.wait(timeout=rng.uniform(0.5, max_delay))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                done += 1
                continue
        if proc.wait() != 0:
            raise RuntimeError(f"run failed with exit code {proc.returncode}: {' '.join(cmd)}")
        return done


def tensors(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def same(a: Path, b: Path) -> bool:
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(bool((ta[k] == tb[k]).all()) for k in ta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs per run (default 2)")
    ap.add_argument("--max-delay", type=float, default=12.0, help="seconds before a kill, at most (default 12)")
    ap.add_argument("--config", default=str(ROOT / "training" / "configs" / "tiny_w2svd.yaml"))
    ap.add_argument("--out", default="/tmp/w2svd-kill")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cache = out / "cache"
    start = time.perf_counter()
    reference = out / "reference"
    run_to_completion(command(args.config, reference, cache, args.overrides), random.Random(0), 0, 0, env)
    want = reference / "pytorch_lora_weights.safetensors"
    rng = random.Random(args.seed)
    survived = kills_total = 0
    for i in range(args.runs):
        run_dir = out / f"run{i}"
        kills_total += run_to_completion(
            command(args.config, run_dir, cache, args.overrides), rng, args.kills, args.max_delay, env
        )
        ok = same(want, run_dir / "pytorch_lora_weights.safetensors")
        survived += ok
        print(f"run {i}: {'identical to the uninterrupted run' if ok else 'DIFFERENT'}", flush=True)
    print(
        f"{survived}/{args.runs} runs survived {kills_total} SIGKILLs with a bitwise-identical final LoRA "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0 if survived == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
