"""Training the video VAE (diffusers' AutoencoderKLHunyuanVideo) on portrait clips: L1 + MSE + small KL.

Moving pixels are a small share of a talking-portrait clip, so a plain reconstruction loss lets the VAE blur the
mouth and eyes while PSNR looks fine. ``motion_weight`` up-weights pixels that change between frames and
``temporal_weight`` adds an L1 loss on frame differences, so the motion a caption names survives the VAE.

A decoder-only run can also learn to decode what a diffusion model produces rather than what the encoder does:
with ``denoiser`` set, a share of each batch is noised in latent space, denoised in one step by that base's
transformer (its clean-latent prediction, with the clip's caption), and decoded against the real clip.
"""

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
    motion_weight: float = 0.0  # per-pixel weight 1 + motion_weight * |frame change| (0..2) on L1 and MSE
    temporal_weight: float = 0.0  # weight of L1 between reconstructed and true frame differences
    denoiser: str = ""  # base ('embedded', a folder, a Hub id) whose clean-latent predictions are decoded too
    denoiser_share: float = 0.5  # share of each batch decoded from the denoiser's prediction
    denoiser_sigma: tuple[float, float] = (0.05, 0.5)  # noise levels drawn uniformly from this range
    val_clips: int = 32  # held-out full-size clips for PSNR
    scale_clips: int = 256  # training clips used to set scaling_factor = 1 / std(latents)

    def validate(self) -> None:
        if self.decoder_only and not self.init:
            raise ConfigError("method.decoder_only needs method.init (the VAE whose encoder is kept)")
        if bool(self.model) == bool(self.init):
            raise ConfigError("give exactly one of method.model (a new VAE) or method.init (a VAE folder)")
        for key in ("motion_weight", "temporal_weight", "kl_weight", "mse_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"method.{key}={getattr(self, key)} must be >= 0")
        if self.denoiser:
            if not self.decoder_only:
                raise ConfigError("method.denoiser needs method.decoder_only: true (the latent space must not move)")
            lo, hi = self.denoiser_sigma
            if not 0 <= lo <= hi <= 1:
                raise ConfigError(f"method.denoiser_sigma={list(self.denoiser_sigma)} must be 0 <= low <= high <= 1")
            if not 0 < self.denoiser_share <= 1:
                raise ConfigError(f"method.denoiser_share={self.denoiser_share} must be in (0, 1]")
        if self.crop and self.crop % 8:
            raise ConfigError(f"method.crop={self.crop} must be a multiple of 8 (or 0 for full frames)")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB between videos in [-1, 1] (peak-to-peak 2)."""
    mse = float(((x.clamp(-1, 1) - y.clamp(-1, 1)) ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def motion_map(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, F, H, W) in [0, 2]: how much each pixel changes to or from its neighbouring frames, widened by 1 px."""
    d = (x[:, :, 1:] - x[:, :, :-1]).abs().amax(1, keepdim=True)  # (B, 1, F-1, H, W)
    zero = torch.zeros_like(d[:, :, :1])
    m = torch.maximum(torch.cat([zero, d], 2), torch.cat([d, zero], 2))
    return torch.nn.functional.max_pool3d(m, (1, 3, 3), stride=1, padding=(0, 1, 1))


def moving_psnr(x: torch.Tensor, y: torch.Tensor, threshold: float = 0.1) -> float:
    """PSNR over the pixels of ``y`` (the reference) that change by more than ``threshold`` between frames."""
    mask = (motion_map(y) > threshold).expand_as(y)
    if not mask.any():
        return float("nan")
    mse = float(((x.clamp(-1, 1) - y.clamp(-1, 1))[mask] ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@register
class VAEMethod(Method):
    uses_optim_lr = True
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
        self.denoiser = self._load_denoiser(cfg.denoiser) if cfg.denoiser else None
        self.data = PortraitDataset(
            "train", seed=train.data.seed, num_frames=train.data.num_frames, size=train.data.size
        )
        self.heldout = PortraitDataset("heldout", num_frames=train.data.num_frames, size=train.data.size)

    def _load_denoiser(self, name: str):
        """The base's backbone (transformer and text encoders, frozen); its VAE encoder must be ours."""
        from w2svd.backbones import backbone_for
        from w2svd.data.latent_cache import DECODER_SIDE
        from w2svd.pipeline import load_base

        pipe, _ = load_base(name, device=str(self.device), dtype=torch.float32)
        ours, theirs = self.vae.state_dict(), pipe.vae.state_dict()
        differ = [k for k in ours if not k.startswith(DECODER_SIDE) and not torch.equal(ours[k], theirs[k].float())]
        if differ:
            raise ConfigError(
                f"method.denoiser={name!r} was trained on another latent space: {len(differ)} VAE encoder tensors "
                f"differ from method.init's (e.g. {differ[0]}); use the base whose VAE method.init fine-tunes"
            )
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
        pipe.vae = None  # only the transformer and the text encoders are needed
        return backbone_for(pipe)

    def param_groups(self):
        return {"vae": ([p for p in self.vae.parameters() if p.requires_grad], self.train_cfg.optim.learning_rate)}

    def batch(self, step: int) -> dict:
        size = self.train_cfg.batch_size  # draws are made for the global batch, then this process's rows kept
        drawn = step_batch(self.data, self.train_cfg.seed, step, size, self.shard)
        video, prompts = drawn["video"], drawn["prompt"]
        c = self.cfg.crop
        batch = {"noise": self.step_noise(step)}
        if c and c < video.shape[-1]:
            rng = np.random.default_rng([self.train_cfg.seed, step, 0xC0])
            # With a denoiser the crop is cut from decoded full-frame latents, so it must fall on the latent grid.
            grid = self.vae.spatial_compression_ratio if self.denoiser is not None else 1
            corners = [grid * rng.integers(0, (video.shape[-1] - c) // grid + 1, size=2) for _ in range(size)]
            corners = corners[self.shard]
            if self.denoiser is not None:
                batch.update(full=video.to(self.device), corners=corners, prompt=prompts)
            video = torch.stack([v[..., y : y + c, x : x + c] for v, (y, x) in zip(video, corners)])
        elif self.denoiser is not None:
            batch.update(full=video.to(self.device), corners=None, prompt=prompts)
        batch["video"] = video.to(self.device)
        return batch

    @torch.no_grad()
    def denoised_latents(self, batch: dict) -> torch.Tensor:
        """Latents of the batch's crops for the decoder: the encoder's, and for a leading share of the rows the
        denoiser's one-step clean prediction from noised full-frame latents (cropped to the same window)."""
        full, corners = batch["full"], batch["corners"]
        z = self.vae.encode(full).latent_dist.mode()
        n = max(1, round(self.cfg.denoiser_share * len(z)))
        noise = batch["noise"].stream("denoiser")
        lo, hi = self.cfg.denoiser_sigma
        sigma = lo + (hi - lo) * noise.rand(len(z), z.device)[:n]
        sf = self.vae.config.scaling_factor
        x0 = z[:n] * sf
        eps = noise.randn_like(z)[:n]
        s = sigma.view(-1, 1, 1, 1, 1)
        xs = (1 - s) * x0 + s * eps
        cond = self.denoiser.encode_prompts(batch["prompt"][:n])
        v = self.denoiser.velocity(xs, sigma, cond)
        z = torch.cat([(xs - s * v) / sf, z[n:]])
        if corners is None:
            return z
        r = self.vae.spatial_compression_ratio
        c = self.cfg.crop // r
        return torch.stack([zi[..., y // r : y // r + c, x // r : x // r + c] for zi, (y, x) in zip(z, corners)])

    def loss(self, phase, batch):
        x = batch["video"]
        with torch.set_grad_enabled(not self.cfg.decoder_only):
            post = self.vae.encode(x).latent_dist
        if self.denoiser is not None:
            latents = self.denoised_latents(batch)
        else:
            latents = post.sample(batch["noise"].stream(phase).generators)
        rec = self.vae.decode(latents).sample
        err = rec - x
        w = 1.0 + self.cfg.motion_weight * motion_map(x) if self.cfg.motion_weight else 1.0
        l1 = (w * err.abs()).mean()
        mse = (w * err**2).mean()
        kl = post.kl().mean() / math.prod(post.mean.shape[1:])
        loss = l1 + self.cfg.mse_weight * mse + self.cfg.kl_weight * kl
        logs = {"vae/l1": l1.item(), "vae/kl": kl.item(), "vae/psnr_train": psnr(rec.detach(), x)}
        if self.cfg.temporal_weight:
            temporal = (err[:, :, 1:] - err[:, :, :-1]).abs().mean()  # |diff(rec) - diff(x)|
            loss = loss + self.cfg.temporal_weight * temporal
            logs["vae/temporal_l1"] = temporal.item()
        return loss, logs

    def trainable_state(self):
        return self.vae.state_dict()

    def load_trainable_state(self, state):
        self.vae.load_state_dict(state)

    def train(self, mode: bool = True) -> None:
        self.vae.train(mode)

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.vae.encode(video).latent_dist.mode()).sample

    def heldout_psnr(self, moving: bool = False) -> float:
        """Mean held-out PSNR, over whole clips or (``moving``) over the pixels that change between frames."""
        vids = torch.stack([self.heldout[i]["video"] for i in range(self.cfg.val_clips)]).to(self.device)
        fn = moving_psnr if moving else psnr
        return float(np.nanmean([fn(self.reconstruct(v[None]), v[None]) for v in vids]))

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        return {"psnr_heldout": self.heldout_psnr(), "psnr_moving_heldout": self.heldout_psnr(moving=True)}

    @torch.no_grad()
    def export(self, out_dir: Path, write: bool = True) -> None:
        if not write:  # another process of a data-parallel run: the main one writes
            return
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
            "psnr_moving_heldout_db": self.heldout_psnr(moving=True),
            "val_clips": self.cfg.val_clips,
            "scaling_factor": scale,
            "latent_mean": float(lat.mean()),
            "latent_shape": list(lat.shape[1:]),
            "params": sum(p.numel() for p in self.vae.parameters()),
        }
        (out_dir / "vae_report.json").write_text(json.dumps(report, indent=1))
