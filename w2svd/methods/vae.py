"""Training the video VAE (diffusers' AutoencoderKLHunyuanVideo) on portrait clips: L1 + MSE + small KL."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLHunyuanVideo

from w2svd.config import ConfigError
from w2svd.data import PortraitDataset, step_batch
from w2svd.methods.base import Method, register


@dataclasses.dataclass
class VAEConfig:
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # AutoencoderKLHunyuanVideo kwargs
    init: str = ""  # start from this VAE folder instead of a new model
    decoder_only: bool = False  # train the decoder alone: latents (and models trained on them) stay valid
    crop: int = 32  # train on random square crops (fully convolutional); 0 = full frames
    kl_weight: float = 1e-6
    mse_weight: float = 1.0
    val_clips: int = 32  # held-out full-size clips for PSNR
    scale_clips: int = 256  # training clips used to set scaling_factor = 1 / std(latents)

    def validate(self) -> None:
        if self.decoder_only and not self.init:
            raise ConfigError("method.decoder_only needs method.init (the VAE whose encoder is kept)")
        if bool(self.model) == bool(self.init):
            raise ConfigError("give exactly one of method.model (a new VAE) or method.init (a VAE folder)")
        if self.crop and self.crop % 8:
            raise ConfigError(f"method.crop={self.crop} must be a multiple of 8 (or 0 for full frames)")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB between videos in [-1, 1] (peak-to-peak 2)."""
    mse = float(((x.clamp(-1, 1) - y.clamp(-1, 1)) ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@register
class VAEMethod(Method):
    name = "vae"
    config_class = VAEConfig

    def __init__(self, cfg: VAEConfig, train, device) -> None:
        super().__init__(cfg, train, device)
        if cfg.init:
            self.vae = AutoencoderKLHunyuanVideo.from_pretrained(cfg.init, dtype=torch.float32).to(device)
        else:
            self.vae = AutoencoderKLHunyuanVideo(**cfg.model).to(device)
        if cfg.decoder_only:
            self.vae.requires_grad_(False)
            self.vae.decoder.requires_grad_(True)
            self.vae.post_quant_conv.requires_grad_(True)
        self.data = PortraitDataset(
            "train", seed=train.data.seed, num_frames=train.data.num_frames, size=train.data.size
        )
        self.heldout = PortraitDataset("heldout", num_frames=train.data.num_frames, size=train.data.size)

    def param_groups(self):
        return {"vae": ([p for p in self.vae.parameters() if p.requires_grad], self.train_cfg.optim.lr)}

    def batch(self, step: int) -> dict:
        size = self.train_cfg.batch_size  # draws are made for the global batch, then this process's rows kept
        video = step_batch(self.data, self.train_cfg.seed, step, size, self.shard)["video"]
        c = self.cfg.crop
        if c and c < video.shape[-1]:
            rng = np.random.default_rng([self.train_cfg.seed, step, 0xC0])
            corners = [rng.integers(0, video.shape[-1] - c + 1, size=2) for _ in range(size)][self.shard]
            video = torch.stack([v[..., y : y + c, x : x + c] for v, (y, x) in zip(video, corners)])
        return {"video": video.to(self.device), "noise": self.step_noise(step)}

    def loss(self, phase, batch):
        x = batch["video"]
        with torch.set_grad_enabled(not self.cfg.decoder_only):
            post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample(batch["noise"].stream(phase).generators)).sample
        l1 = (rec - x).abs().mean()
        mse = ((rec - x) ** 2).mean()
        kl = post.kl().mean() / math.prod(post.mean.shape[1:])
        loss = l1 + self.cfg.mse_weight * mse + self.cfg.kl_weight * kl
        return loss, {"vae/l1": l1.item(), "vae/kl": kl.item(), "vae/psnr_train": psnr(rec.detach(), x)}

    def trainable_state(self):
        return self.vae.state_dict()

    def load_trainable_state(self, state):
        self.vae.load_state_dict(state)

    def train(self, mode: bool = True) -> None:
        self.vae.train(mode)

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.vae.encode(video).latent_dist.mode()).sample

    def heldout_psnr(self) -> float:
        vids = torch.stack([self.heldout[i]["video"] for i in range(self.cfg.val_clips)]).to(self.device)
        return float(np.mean([psnr(self.reconstruct(v[None]), v[None]) for v in vids]))

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        return {"psnr_heldout": self.heldout_psnr()}

    @torch.no_grad()
    def export(self, out_dir: Path) -> None:
        lat = []
        for i in range(0, self.cfg.scale_clips, 16):
            vids = torch.stack([self.data[j]["video"] for j in range(i, min(i + 16, self.cfg.scale_clips))])
            lat.append(self.vae.encode(vids.to(self.device)).latent_dist.mode())
        lat = torch.cat(lat)
        if self.cfg.decoder_only:  # the latent space is unchanged, so is its scale
            scale = float(self.vae.config.scaling_factor)
        else:
            scale = float(1.0 / lat.std())
            self.vae.register_to_config(scaling_factor=scale)
        self.vae.save_pretrained(out_dir / "vae")
        report = {
            "psnr_heldout_db": self.heldout_psnr(),
            "val_clips": self.cfg.val_clips,
            "scaling_factor": scale,
            "latent_mean": float(lat.mean()),
            "latent_shape": list(lat.shape[1:]),
            "params": sum(p.numel() for p in self.vae.parameters()),
        }
        (out_dir / "vae_report.json").write_text(json.dumps(report, indent=1))
