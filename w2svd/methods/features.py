"""Training the evaluation feature networks (frame and clip encoders) as attribute classifiers."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from w2svd.config import ConfigError
from w2svd.data import APPEARANCE_NAMES, ATTRIBUTE_NAMES, PortraitDataset, heldout_examples, step_batch
from w2svd.eval.features import NUM_FRAMES, SIZE, EncoderConfig, FeatureNets, build_feature_nets, save_feature_nets
from w2svd.eval.metrics import encoder_accuracies
from w2svd.methods.base import Method, register


@dataclasses.dataclass
class FeaturesConfig:
    frame: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    clip: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    frames_per_clip: int = 3  # frames of each training clip the frame encoder sees
    flip: bool = True  # random horizontal flips (every attribute is mirror-symmetric)
    val_clips: int = 256  # held-out clips for the accuracies logged and exported

    def validate(self) -> None:
        if not 1 <= self.frames_per_clip <= NUM_FRAMES:
            raise ConfigError(f"method.frames_per_clip={self.frames_per_clip} must be in [1, {NUM_FRAMES}]")
        if self.val_clips < 1:
            raise ConfigError(f"method.val_clips={self.val_clips} must be >= 1")


def classification_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the heads; ``labels`` (B, len(ATTRIBUTE_NAMES)) class indices."""
    losses, accs = [], []
    for name, lg in logits.items():
        target = labels[:, ATTRIBUTE_NAMES.index(name)]
        losses.append(F.cross_entropy(lg, target))
        accs.append((lg.argmax(-1) == target).float().mean())
    return torch.stack(losses).mean(), float(torch.stack(accs).mean())


@register
class FeaturesMethod(Method):
    uses_optim_lr = True
    name = "features"
    config_class = FeaturesConfig

    def __init__(self, cfg: FeaturesConfig, train, device) -> None:
        super().__init__(cfg, train, device)
        if (train.data.num_frames, train.data.size) != (NUM_FRAMES, SIZE):
            raise ConfigError(
                f"features needs data.num_frames={NUM_FRAMES} and data.size={SIZE} (what metrics feed it); "
                f"got {train.data.num_frames} and {train.data.size}"
            )
        self.nets = build_feature_nets(cfg.frame, cfg.clip)
        self.nets.frame.to(device)
        self.nets.clip.to(device)
        self.data = PortraitDataset("train", seed=train.data.seed, num_frames=NUM_FRAMES, size=SIZE)
        self.started = time.perf_counter()

    def param_groups(self):
        return {
            "frame": (list(self.nets.frame.parameters()), self.train_cfg.optim.learning_rate),
            "clip": (list(self.nets.clip.parameters()), self.train_cfg.optim.learning_rate),
        }

    def batch(self, step: int) -> dict:
        size = self.train_cfg.batch_size  # draws are made for the global batch, then this process's rows kept
        b = step_batch(self.data, self.train_cfg.seed, step, size, self.shard)
        video, n = b["video"], len(b["video"])  # (B, 3, F, H, W)
        rng = np.random.default_rng([self.train_cfg.seed, step, 0xFEA7])
        if self.cfg.flip:
            flip = torch.from_numpy((rng.random(size) < 0.5)[self.shard])
            video[flip] = video[flip].flip(-1)
        pick = torch.from_numpy(rng.integers(NUM_FRAMES, size=(size, self.cfg.frames_per_clip))[self.shard])
        frames = video.transpose(1, 2)[torch.arange(n)[:, None], pick]  # (B, k, 3, H, W)
        return {
            "video": video.to(self.device),
            "frames": frames.flatten(0, 1).to(self.device),  # (B*k, 3, H, W)
            "labels": b["labels"].to(self.device),
            "frame_labels": b["labels"].repeat_interleave(self.cfg.frames_per_clip, 0).to(self.device),
        }

    def loss(self, phase, batch):
        if phase == "frame":
            _, logits = self.nets.frame(batch["frames"])
            loss, acc = classification_loss(logits, batch["frame_labels"])
        else:
            _, logits = self.nets.clip(batch["video"])
            loss, acc = classification_loss(logits, batch["labels"])
        return loss, {f"{phase}/acc_train": acc}

    def trainable_state(self):
        return self.nets.state_dict()

    def load_trainable_state(self, state):
        self.nets.load_state_dict(state)

    def train(self, mode: bool = True) -> None:
        self.nets.frame.train(mode)
        self.nets.clip.train(mode)

    def heldout_accuracies(self) -> dict[str, float]:
        return encoder_accuracies(heldout_examples(self.cfg.val_clips), self.nets)

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        acc = {k: v for k, v in self.heldout_accuracies().items() if k.startswith(("frame/", "clip/"))}
        return {"acc_min": min(acc.values()), **acc}

    @torch.no_grad()
    def export(self, out_dir: Path, write: bool = True) -> None:
        if not write:  # another process of a data-parallel run: the main one writes
            return
        info = {
            "heldout_accuracy": self.heldout_accuracies(),
            "heldout_clips": self.cfg.val_clips,
            "appearance": list(APPEARANCE_NAMES),
            "attributes": list(ATTRIBUTE_NAMES),
            "train_steps": self.train_cfg.max_steps,
            "batch_size": self.train_cfg.batch_size,
            "wall_time_s_this_session": round(time.perf_counter() - self.started, 1),
        }
        save_feature_nets(FeatureNets(self.nets.frame, self.nets.clip), out_dir, info)
