"""Small feature networks trained on the portrait world, standing in for Inception (FID) and I3D (FVD).

The frame encoder sees single 64x64 frames and predicts the appearance attributes; the clip encoder sees
(3, F, 64, 64) clips plus their frame differences and predicts every attribute including motion. Each
returns a penultimate feature vector (for Frechet distances) and one logit tensor per attribute.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from w2svd.config import ConfigError
from w2svd.data import APPEARANCE_NAMES, ATTRIBUTE_NAMES, ATTRIBUTES, video_to_tensor

SIZE = 64  # frame height and width the encoders accept
NUM_FRAMES = 9  # clip length the clip encoder is trained on
WEIGHTS = "feature_nets.safetensors"
CONFIG = "config.json"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "assets" / "features"


@dataclasses.dataclass
class EncoderConfig:
    width: int = 24  # channels of the first conv; later stages use 2x and 2.67x (rounded to groups of 8)
    feature_dim: int = 64  # penultimate features used by the Frechet distances

    def validate(self) -> None:
        if self.width < 8 or self.width % 8:
            raise ConfigError(f"encoder width={self.width} must be a positive multiple of 8 (GroupNorm of 8 groups)")
        if self.feature_dim < 1:
            raise ConfigError(f"encoder feature_dim={self.feature_dim} must be >= 1")


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2), nn.GroupNorm(8, cout), nn.SiLU())


def _trunk(cin: int, width: int) -> tuple[nn.Sequential, int]:
    """64x64 -> 4x4 in four stride-2 convs; returns the module and its output channels."""
    c1, c2, c3 = width, 2 * width, 8 * ((8 * width // 3 + 7) // 8)
    trunk = nn.Sequential(_conv(cin, c1, 4, 2), _conv(c1, c2, 3, 2), _conv(c2, c3, 3, 2), _conv(c3, c3, 3, 2))
    return trunk, c3


class _Heads(nn.Module):
    """One linear classifier per attribute on top of the (activated) features."""

    def __init__(self, feature_dim: int, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names
        self.sizes = [len(ATTRIBUTES[n]) for n in names]
        self.linear = nn.Linear(feature_dim, sum(self.sizes))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.linear(nn.functional.silu(features)).split(self.sizes, dim=-1)))


class FrameEncoder(nn.Module):
    """2D CNN on frames (B, 3, 64, 64) in [-1, 1] -> features (B, D) and appearance logits."""

    names = APPEARANCE_NAMES

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk, c = _trunk(3, cfg.width)
        self.project = nn.Linear(c * 16, cfg.feature_dim)
        self.heads = _Heads(cfg.feature_dim, self.names)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if frames.ndim != 4 or frames.shape[1:] != (3, SIZE, SIZE):
            raise ValueError(f"FrameEncoder wants frames (B, 3, {SIZE}, {SIZE}); got {tuple(frames.shape)}")
        features = self.project(self.trunk(frames).flatten(1))  # (B, D)
        return features, self.heads(features)


class ClipEncoder(nn.Module):
    """Per-frame 2D trunk on frames and frame differences, then temporal convs and time pooling."""

    names = ATTRIBUTE_NAMES

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk, c = _trunk(6, cfg.width)
        self.temporal = nn.Sequential(
            nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0)),
            nn.GroupNorm(8, c),
            nn.SiLU(),
            nn.Conv3d(c, c, (3, 3, 3), padding=1),
            nn.GroupNorm(8, c),
            nn.SiLU(),
        )
        self.project = nn.Linear(2 * c * 16, cfg.feature_dim)
        self.heads = _Heads(cfg.feature_dim, self.names)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[3:] != (SIZE, SIZE) or video.shape[2] < 2:
            raise ValueError(f"ClipEncoder wants video (B, 3, F>=2, {SIZE}, {SIZE}); got {tuple(video.shape)}")
        b, _, f, h, w = video.shape
        diff = torch.cat([torch.zeros_like(video[:, :, :1]), video.diff(dim=2)], dim=2)  # (B, 3, F, H, W)
        x = torch.cat([video, diff], dim=1).transpose(1, 2).reshape(b * f, 6, h, w)
        x = self.trunk(x)  # (B*F, C, 4, 4)
        x = self.temporal(x.reshape(b, f, *x.shape[1:]).transpose(1, 2))  # (B, C, F, 4, 4)
        pooled = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)  # (B, 2C, 4, 4): any onset time
        features = self.project(pooled.flatten(1))  # (B, D)
        return features, self.heads(features)


@dataclasses.dataclass
class FeatureNets:
    """The pair of encoders used by every metric, in eval mode."""

    frame: FrameEncoder
    clip: ClipEncoder
    info: dict = dataclasses.field(default_factory=dict)  # training facts and held-out accuracies

    @property
    def device(self) -> torch.device:
        return next(self.frame.parameters()).device

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"frame.{k}": v for k, v in self.frame.state_dict().items()}
        return state | {f"clip.{k}": v for k, v in self.clip.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, net in (("frame.", self.frame), ("clip.", self.clip)):
            net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def build_feature_nets(frame: EncoderConfig, clip: EncoderConfig) -> FeatureNets:
    """Fresh (untrained) encoders from their configs."""
    return FeatureNets(FrameEncoder(frame), ClipEncoder(clip))


def save_feature_nets(nets: FeatureNets, out_dir: str | Path, info: dict | None = None) -> Path:
    """Write ``feature_nets.safetensors`` and ``config.json`` (architecture + ``info``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in nets.state_dict().items()}, out / WEIGHTS)
    config = {
        "frame": dataclasses.asdict(nets.frame.cfg),
        "clip": dataclasses.asdict(nets.clip.cfg),
        "size": SIZE,
        "num_frames": NUM_FRAMES,
        **(info or {}),
    }
    (out / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    return out


def load_feature_nets(path: str | Path | None = None, device: str | torch.device = "cpu") -> FeatureNets:
    """Load the shipped encoders (``assets/features`` by default) in eval mode."""
    folder = Path(path) if path is not None else DEFAULT_DIR
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise FileNotFoundError(
            f"no feature networks in {str(folder)!r} (need {WEIGHTS} and {CONFIG}); train them with "
            "`python training/run.py --config training/configs/embedded_features.yaml` and copy the run's "
            "export here, or pass the run folder as path"
        )
    config = json.loads((folder / CONFIG).read_text())
    nets = build_feature_nets(EncoderConfig(**config.pop("frame")), EncoderConfig(**config.pop("clip")))
    nets.info = config
    nets.load_state_dict(load_file(folder / WEIGHTS))
    nets.frame.to(device).eval().requires_grad_(False)
    nets.clip.to(device).eval().requires_grad_(False)
    return nets


def clips_to_tensor(clips: np.ndarray) -> torch.Tensor:
    """uint8 (N, F, H, W, 3) -> float (N, 3, F, H, W) in [-1, 1]; checks the shape the encoders need."""
    if not isinstance(clips, np.ndarray) or clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        got = f"{type(clips).__name__} {getattr(clips, 'dtype', '')} {getattr(clips, 'shape', '')}"
        raise ValueError(f"clips must be a uint8 array (N, F, H, W, 3) like render_examples returns; got {got}")
    if clips.shape[2:4] != (SIZE, SIZE):
        raise ValueError(f"clips must be {SIZE}x{SIZE} frames; got {clips.shape[2]}x{clips.shape[3]} (resize first)")
    return torch.stack([video_to_tensor(c) for c in clips])
