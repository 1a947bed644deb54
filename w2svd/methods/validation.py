"""Validation during distillation: FD and adherence of the few-step sampler, appended to ``metrics.jsonl``.

These points make the training curves of the benchmark (FD-clip vs step, DMD vs W2SVD). They need the
metric networks' clip format (the embedded portrait world: 9 frames, 64x64), so they are off (n=0) for
other data settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from w2svd.backbones import Backbone, Cond
from w2svd.data import tensor_to_video
from w2svd.eval.features import NUM_FRAMES, SIZE
from w2svd.eval.metrics import evaluate_generator
from w2svd.sampling import ModelFn, SeededRenoise, sample_euler, sample_renoise, seeded_noise
from w2svd.training.config import DataConfig

METRICS_FILE = "metrics.jsonl"
LOSSES_FILE = "losses.jsonl"  # in the run folder: one line per log_every steps, the loop's losses
VAL_SUBSET = 64  # what the validation curves scored before they scored 256 pairs (docs/stability.md)


def validation_metrics(
    sample: Callable[[list[str], list[int]], torch.Tensor],
    n: int,
    step: int,
    out_dir: Path,
    generator_updates: int,
    batch_size: int = 32,
) -> dict[str, float]:
    """Score ``sample`` (prompts, seeds -> videos in [-1, 1]) on ``n`` held-out pairs; log a line in metrics.jsonl."""

    def generate(prompts: list[str], seeds: list[int]) -> np.ndarray:
        video = sample(prompts, seeds)
        if tuple(video.shape[2:]) != (NUM_FRAMES, SIZE, SIZE):
            raise ValueError(
                f"validation metrics need {NUM_FRAMES} frames of {SIZE}x{SIZE} (the metric networks' format), "
                f"got videos of shape {tuple(video.shape)}; set method.val_metrics_n=0 for this data setting"
            )
        return np.stack([tensor_to_video(v) for v in video])

    first = VAL_SUBSET if n > VAL_SUBSET else 0  # the 64-pair figures too, comparable with 64-pair curves
    result = evaluate_generator(generate, n=n, batch_size=batch_size, first=first)
    kept = ("fd_frame", "fd_clip", "adherence/", "temporal/", "motion_vs_real", "flicker_vs_real")
    scores = {k: float(v) for k, v in result.items() if k.startswith(kept)}
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps({"step": step, "generator_updates": generator_updates, "n": n, **scores}) + "\n")
    return scores


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The validation points of a run, one per step (a resumed run's repeated step keeps its last line)."""
    return lines_by_step(Path(run_dir) / "validation" / METRICS_FILE)


def read_losses(run_dir: str | Path) -> list[dict[str, float]]:
    """The logged losses of a run, one per logged step (a resumed run's repeated steps keep their last line)."""
    return lines_by_step(Path(run_dir) / LOSSES_FILE)


def lines_by_step(path: Path) -> list[dict[str, float]]:
    """A JSON-lines log's entries in step order, the last line of each step (a resumed run repeats steps)."""
    if not path.is_file():
        return []
    points = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            points[entry["step"]] = entry
    return [points[s] for s in sorted(points)]


@torch.no_grad()
def few_step_videos(
    backbone: Backbone,
    velocity_for: Callable[[Cond], ModelFn],
    sigmas: torch.Tensor,
    data: DataConfig,
    prompts: list[str],
    seeds: list[int],
    device: torch.device,
    renoise: bool = True,
) -> torch.Tensor:
    """Decoded videos in [-1, 1] from ``sample_renoise`` (``renoise``, per-seed re-noising) or ``sample_euler`` with
    ``velocity_for(cond)``, per-seed CPU noise: the pipeline's few-step sampler."""
    cond = backbone.encode_prompts(prompts)
    shape = backbone.latent_shape(data.num_frames, *data.hw)
    noise = seeded_noise(shape, seeds).to(device)
    if renoise:
        lat = sample_renoise(velocity_for(cond), noise, sigmas, noise_fn=SeededRenoise(seeds))
    else:
        lat = sample_euler(velocity_for(cond), noise, sigmas)
    return backbone.decode_latents(lat)


def write_validation_grid(
    sample: Callable[[list[str], list[int]], torch.Tensor], n: int, step: int, out_dir: Path
) -> None:
    """Samples of the first ``n`` held-out prompts as ``out_dir/step-XXXXXXX.png``."""
    from w2svd.data import heldout_examples
    from w2svd.data.grid import grid_image

    examples = heldout_examples(n)
    video = sample([e.prompt for e in examples], [e.seed for e in examples])
    clips = np.stack([tensor_to_video(v) for v in video])
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_image(clips, [e.prompt for e in examples]).save(out_dir / f"step-{step:07d}.png")
