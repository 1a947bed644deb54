"""Diagnostic: how much of a few-step LoRA's misplaced motion is fine detail re-invented per latent frame?

Two measurements on the 256 held-out pairs (the benchmark's):

- the mean absolute change between consecutive latent frames, per motion kind, of the LoRA's final latents, of the
  default base's (28 steps, CFG 2) and of real clips' latents, overall and outside the rows where the motion kind
  moves real clips (``--quiet-rows``: the latent rows whose real change is below a tenth of the busiest row's);
- the LoRA's videos after one extra step of the base (LoRA off) at noise level s: SDEdit (noise the LoRA's latent
  to s with fresh noise, one Euler step to 0) or plain (the latent taken as x_s as it is). That is 1 more NFE, so it
  is a probe, not a sampler we ship: if it lifts motion in region, the missing placement is per-frame detail that a
  denoiser at s removes.

    python tools/residual_probe.py [--lora assets/embedded/w2svd-4step] [--n 256] [--levels 0.1 0.2]
        [--out docs/experiments/residual_probe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from w2svd.data import heldout_examples
from w2svd.data.attributes import ATTRIBUTES
from w2svd.data.dataset import render_examples, tensor_to_video, video_to_tensor
from w2svd.eval import temporal
from w2svd.eval.motion_regions import region_figures
from w2svd.pipeline import VideoGenerator

BATCH = 32


def latent_change(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, T, h, w) -> (N, h, w): mean absolute change between consecutive latent frames."""
    return (latents[:, :, 1:] - latents[:, :, :-1]).abs().mean((1, 2))


def to_frames(gen: VideoGenerator, latents: torch.Tensor) -> np.ndarray:
    chunks = (gen.backbone.decode_latents(latents[i : i + BATCH]) for i in range(0, len(latents), BATCH))
    return np.stack([tensor_to_video(v) for video in chunks for v in video])


def polish(gen: VideoGenerator, latents: torch.Tensor, conds: list, s: float, sdedit: bool) -> torch.Tensor:
    """One Euler step of the base from level ``s`` to 0 (the LoRA must be disabled by the caller); ``conds``: the
    encoded prompts of each chunk of ``BATCH`` latents."""
    out = []
    for i, cond in zip(range(0, len(latents), BATCH), conds, strict=True):
        x0 = latents[i : i + BATCH]
        x = x0
        if sdedit:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234 + i))
            x = (1 - s) * x0 + s * noise
        with torch.no_grad():
            v = gen.backbone.velocity(x, torch.full((len(x),), s), cond, 1.0)
        out.append(x - s * v)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="assets/embedded/base")
    p.add_argument("--lora", default="assets/embedded/w2svd-4step")
    p.add_argument("--n", type=int, default=256, help="held-out pairs (the benchmark's first n)")
    p.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.2], help="noise levels s of the base's step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)
    if not 1 <= a.n <= 256:
        p.error(f"--n={a.n} must be in [1, 256]")
    if any(not 0 < s < 1 for s in a.levels):
        p.error(f"--levels {a.levels}: every level must be in (0, 1)")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    examples = heldout_examples(a.n)
    prompts, seeds = [e.prompt for e in examples], [e.seed for e in examples]
    motions = [ATTRIBUTES["motion"][e.portrait.motion] for e in examples]
    gen = VideoGenerator.from_pretrained(a.base, lora=a.lora)

    real = render_examples(examples)
    chunks = range(0, a.n, BATCH)
    real_lat = torch.cat(
        [gen.backbone.encode_video(torch.stack([video_to_tensor(c) for c in real[i : i + BATCH]])) for i in chunks]
    )
    lora_lat = torch.cat([gen.few_step(prompts[i : i + BATCH], seeds[i : i + BATCH]).latents for i in chunks])
    base_lat = torch.cat([gen.baseline(prompts[i : i + BATCH], seeds[i : i + BATCH]).latents for i in chunks])

    labels = np.array(motions)
    change = {"real": latent_change(real_lat), "lora": latent_change(lora_lat), "base": latent_change(base_lat)}
    per_motion = {}
    for m in sorted(set(motions)):
        i = torch.from_numpy(labels == m)
        rows = change["real"][i].mean((0, 2))
        quiet = rows < 0.1 * rows.max()
        per_motion[m] = {
            k: {
                "all": round(float(c[i].mean()), 4),
                "quiet_rows": round(float(c[i][:, quiet].mean()), 4) if quiet.any() else None,
            }
            for k, c in change.items()
        }

    real_t = temporal.summarise(real)

    def row(name: str, latents: torch.Tensor) -> dict:
        frames = to_frames(gen, latents)
        t = temporal.summarise(frames)
        r = {
            "name": name,
            "motion_region": float(region_figures(frames, motions)["right"].mean()),
            "motion_x_real": t["motion"] / real_t["motion"],
            "flicker_x_real": t["flicker"] / real_t["flicker"],
            "latent_change": float(latent_change(latents).mean()),
        }
        print(f"{name:34s} region {r['motion_region']:.1%}  motion x real {r['motion_x_real']:.2f}  flicker x real "
              f"{r['flicker_x_real']:.2f}  latent change {r['latent_change']:.4f}", flush=True)  # fmt: skip
        return r

    rows = [row("lora", lora_lat), row("base-28 (CFG 2)", base_lat)]
    gen._unfuse_lora()
    gen.pipe.disable_lora()
    conds = [gen.backbone.encode_prompts(prompts[i : i + BATCH]) for i in chunks]  # once for every level
    for s in a.levels:
        rows.append(row(f"lora + base step, plain s={s:g}", polish(gen, lora_lat, conds, s, sdedit=False)))
        rows.append(row(f"lora + base step, SDEdit s={s:g}", polish(gen, lora_lat, conds, s, sdedit=True)))
    for m, figs in per_motion.items():
        parts = [f"{k} {v['all']:.4f} (quiet rows {v['quiet_rows']})" for k, v in figs.items()]
        print(f"latent change, {m:9s} " + "  ".join(parts))
    result = {
        "command": " ".join(["python tools/residual_probe.py", *(sys.argv[1:] if argv is None else argv)]),
        "n": a.n,
        "rows": rows,
        "latent_change_per_motion": per_motion,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
