"""Where is motion lost: in the sampled latents, or in the VAE decoder?

The clip encoder judges motion on decoded pixels, so a low motion adherence can come from the transformer (its
latents carry the wrong motion) or from the decoder (right latents, motion blurred away). A small classifier
trained on the VAE latents of real training clips ("latent probe") separates the two: it reads the motion kind
straight from a sampler's latents.

    python -m w2svd.eval.probe [--base embedded] [--steps 28 4] [--cfg-scale 1] [--n 256] [--threads 2]

prints, for real clips and each step count, motion adherence read from latents (probe) and from pixels (clip
encoder), plus the confusion matrices. Real clips are scored in pixels after a VAE round trip, the decoder's
ceiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from w2svd.data import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    heldout_examples,
    labels_of,
    render_examples,
    tensor_to_video,
    video_to_tensor,
)
from w2svd.data.dataset import make_example
from w2svd.eval.features import FeatureNets, load_feature_nets
from w2svd.eval.metrics import embed

MOTION = ATTRIBUTE_NAMES.index("motion")
MOTION_KINDS = ATTRIBUTES["motion"]
PROBE_SEED = 123  # training clips for the probe: the train split under a seed no run uses


class LatentProbe(nn.Module):
    """Three 3D convolutions and a linear head over standardised latents (C, T, h, w) -> motion logits."""

    def __init__(self, latent_shape: tuple[int, ...], width: int = 64) -> None:
        super().__init__()
        c, t, h, w = latent_shape
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.net = nn.Sequential(
            nn.Conv3d(c, width, 3, padding=1),
            nn.GELU(),
            nn.Conv3d(width, width, 3, padding=1, stride=(1, 2, 2)),
            nn.GELU(),
            nn.Conv3d(width, width, 3, padding=1, stride=(1, 2, 2)),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(width * t * -(-h // 4) * -(-w // 4), len(MOTION_KINDS)),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net((latents - self.mean) / self.std)


def encode_clips(backbone, clips: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """Latents (as the transformer sees them) of uint8 clips (N, F, H, W, 3), on the CPU."""
    out = []
    for i in range(0, len(clips), batch_size):
        video = torch.stack([video_to_tensor(c) for c in clips[i : i + batch_size]])
        out.append(backbone.encode_video(video).float().cpu())
    return torch.cat(out)


def vae_roundtrip(vae, clips: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 clips (N, F, H, W, 3) after a round trip through a VAE: encode (posterior mode), then decode."""
    out = []
    with torch.no_grad():
        for i in range(0, len(clips), batch_size):
            video = torch.stack([video_to_tensor(c) for c in clips[i : i + batch_size]]).to(vae.device, vae.dtype)
            out += [tensor_to_video(r) for r in vae.decode(vae.encode(video).latent_dist.mode()).sample]
    return np.stack(out)


def read_motion(clips: np.ndarray, nets: FeatureNets, batch_size: int = 32) -> np.ndarray:
    """The motion kind the clip encoder reads from each uint8 clip (index into ``MOTION_KINDS``)."""
    return embed(clips, nets, batch_size).clip_predictions[:, MOTION]


def train_probe(latents: torch.Tensor, labels: torch.Tensor, epochs: int = 10, seed: int = 0) -> LatentProbe:
    """Fit a :class:`LatentProbe` on (latents, motion labels) with AdamW, batch 64."""
    if len(latents) != len(labels) or len(latents) == 0:
        raise ValueError(f"need as many labels as latents (got {len(latents)} latents, {len(labels)} labels)")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = LatentProbe(tuple(latents.shape[1:]))
    probe.mean.fill_(float(latents.mean()))
    probe.std.fill_(float(latents.std()))
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    probe.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(latents), generator=gen).split(64):
            loss = nn.functional.cross_entropy(probe(latents[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


def confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(kinds, kinds) counts: row = prompted motion, column = the one read."""
    cm = np.zeros((len(MOTION_KINDS), len(MOTION_KINDS)), dtype=int)
    np.add.at(cm, (truth, pred), 1)
    return cm


@dataclasses.dataclass
class ProbeRow:
    name: str
    latent_confusion: np.ndarray  # from the probe on latents
    pixel_confusion: np.ndarray  # from the clip encoder on decoded pixels

    @staticmethod
    def accuracy(cm: np.ndarray) -> float:
        return float(np.trace(cm) / max(cm.sum(), 1))

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "motion_latent_probe": self.accuracy(self.latent_confusion),
            "motion_pixels": self.accuracy(self.pixel_confusion),
            "latent_confusion": self.latent_confusion.tolist(),
            "pixel_confusion": self.pixel_confusion.tolist(),
        }


def run_probe(
    generator,
    steps: list[int],
    n: int = 256,
    n_train: int = 3000,
    epochs: int = 10,
    batch_size: int = 32,
    nets: FeatureNets | None = None,
    cfg_scale: float = 1.0,
) -> list[ProbeRow]:
    """Train the probe on ``n_train`` real clips, then score real clips and base samples at each step count.

    The base samples with ``cfg_scale`` (default 1: unguided, whatever the base's own default is).
    """
    nets = nets or load_feature_nets()
    backbone = generator.backbone
    train_ex = [make_example("train", PROBE_SEED, i) for i in range(n_train)]
    probe = train_probe(
        encode_clips(backbone, render_examples(train_ex), batch_size),
        torch.from_numpy(labels_of(train_ex)[:, MOTION]).long(),
        epochs,
    )
    examples = heldout_examples(n)
    truth = labels_of(examples)[:, MOTION]

    def read(latents: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([probe(z).argmax(1) for z in latents.split(256)]).numpy()

    def pixels(clips: np.ndarray) -> np.ndarray:
        return read_motion(clips, nets, batch_size)

    real = render_examples(examples)
    latents = encode_clips(backbone, real, batch_size)
    round_trip = vae_roundtrip(backbone.vae, real, batch_size)
    rows = [ProbeRow("real clips", confusion(truth, read(latents)), confusion(truth, pixels(round_trip)))]
    for s in steps:
        lat, frames = [], []
        for i in range(0, n, batch_size):
            part = examples[i : i + batch_size]
            result = generator.baseline([e.prompt for e in part], [e.seed for e in part], steps=s, cfg_scale=cfg_scale)
            lat.append(result.latents)
            frames.append(result.frames)
        rows.append(
            ProbeRow(
                f"base-{s}" + (f" cfg {cfg_scale:g}" if cfg_scale != 1.0 else ""),
                confusion(truth, read(torch.cat(lat))),
                confusion(truth, pixels(np.concatenate(frames))),
            )
        )
    return rows


def format_table(rows: list[ProbeRow]) -> str:
    """Markdown table: motion adherence read from latents and from pixels, per row."""
    lines = ["| samples | motion read from latents (probe) | motion read from pixels (clip encoder) |", "|---|---|---|"]
    for r in rows:
        d = r.as_dict()
        lines.append(f"| {r.name} | {d['motion_latent_probe']:.1%} | {d['motion_pixels']:.1%} |")
    return "\n".join(lines)


def format_confusions(rows: list[ProbeRow]) -> str:
    """Plain-text confusion matrices (row: prompted motion, column: the one read)."""
    head = " ".join(f"{k[:5]:>5}" for k in MOTION_KINDS)
    lines = []
    for r in rows:
        for label, cm in (("latents", r.latent_confusion), ("pixels", r.pixel_confusion)):
            lines += ["", f"{r.name}, {label} (row: prompted, column: read)", f"{'':>9} {head}"]
            lines += [f"{k[:9]:>9} " + " ".join(f"{v:>5}" for v in row) for k, row in zip(MOTION_KINDS, cm)]
    return "\n".join(lines[1:])


def main(argv: list[str] | None = None) -> int:
    from w2svd.pipeline import VideoGenerator, check_cfg_scale

    ap = argparse.ArgumentParser(prog="python -m w2svd.eval.probe", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="embedded", help="base model: 'embedded', a folder or a Hub id")
    ap.add_argument("--steps", type=int, nargs="*", default=[28, 4], help="Euler step counts to sample (default 28 4)")
    ap.add_argument("--n", type=int, default=256, help="held-out prompts (default 256)")
    ap.add_argument("--n-train", type=int, default=3000, help="real training clips for the probe (default 3000)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument(
        "--cfg-scale", type=float, default=1.0, help="classifier-free guidance of the base samples (default 1: none)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--out-md", default=None, help="also write the tables to this Markdown file, with the command")
    args = ap.parse_args(argv)
    for name in ("n", "n_train", "epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if any(s < 1 for s in args.steps):
        ap.error(f"--steps must be positive, got {args.steps}")
    try:
        check_cfg_scale(args.cfg_scale, "--cfg-scale")
    except ValueError as e:
        ap.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    gen = VideoGenerator.from_pretrained(args.base)
    rows = run_probe(gen, args.steps, args.n, args.n_train, args.epochs, cfg_scale=args.cfg_scale)
    table, matrices = format_table(rows), format_confusions(rows)
    footer = f"{args.n} held-out pairs, probe trained on {args.n_train} clips; {time.perf_counter() - start:.0f} s"
    print(f"{table}\n\n{matrices}\n\n{footer}")
    if args.out_md:
        command = " ".join(["python -m w2svd.eval.probe", *(sys.argv[1:] if argv is None else argv)])
        intro = __doc__.split("\n\n")[1]  # the paragraph on what the probe separates
        Path(args.out_md).write_text(
            f"# Motion in latents vs in pixels\n\nReproduce with:\n\n```bash\n{command}\n```\n\n{intro}\n\n"
            f"{table}\n\n```\n{matrices}\n```\n\n{footer}.\n"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
