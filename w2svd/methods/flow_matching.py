"""Rectified-flow pre-training of the teacher transformer on cached latents and text embeddings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from w2svd.backbones import Cond, backbone_for
from w2svd.config import ConfigError
from w2svd.data import PortraitDataset
from w2svd.methods.base import Method, register
from w2svd.models.text import build_clip_tokenizer, build_llama_tokenizer, build_text_encoders, caption_corpus
from w2svd.sampling import get_sigmas, sample_euler, shift_sigmas

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FlowMatchingConfig:
    base: str = ""  # pipeline folder whose components (and transformer, if no `transformer` given) are reused
    vae: str = ""  # VAE folder, when building the embedded pipeline from parts
    text: dict[str, Any] = dataclasses.field(default_factory=dict)  # {llama: {...}, clip: {...}, seed, vocab_size}
    transformer: dict[str, Any] = dataclasses.field(default_factory=dict)  # kwargs for a new transformer
    shift: float = 3.0  # flow shift for training timesteps and the saved scheduler
    caption_dropout: float = 0.1  # fraction of empty prompts, so true CFG stays possible
    cache_dir: str = "runs/cache"
    cache_clips: int = 20000
    val_prompts: int = 8
    val_steps: int = 28
    generation: dict[str, Any] = dataclasses.field(default_factory=dict)  # written to generation_defaults.json

    def validate(self) -> None:
        if not self.base and not (self.vae and self.text):
            raise ConfigError("method needs either `base` (a pipeline folder) or both `vae` and `text` to build one")
        if not self.base and not self.transformer:
            raise ConfigError("method.transformer (model kwargs) is required when no `base` pipeline is given")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"method.caption_dropout={self.caption_dropout} must be in [0, 1)")


def build_embedded_pipeline(cfg: FlowMatchingConfig) -> HunyuanVideoPipeline:
    """Assemble a HunyuanVideoPipeline from a trained VAE, new text parts and a new transformer."""
    text = dict(cfg.text)
    corpus = caption_corpus(seed=int(text.get("seed", 0)))
    vocab = int(text.get("vocab_size", 1024))
    tok, tok2 = build_llama_tokenizer(corpus, vocab), build_clip_tokenizer(corpus, vocab)
    llama, clip = build_text_encoders(
        len(tok), len(tok2), tok2.eos_token_id, text.get("llama", {}), text.get("clip", {}), int(text.get("seed", 0))
    )
    vae = AutoencoderKLHunyuanVideo.from_pretrained(cfg.vae)
    torch.manual_seed(int(text.get("seed", 0)))
    transformer = HunyuanVideoTransformer3DModel(**cfg.transformer)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.shift)
    return HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=clip,
        tokenizer_2=tok2,
    )


@register
class FlowMatchingMethod(Method):
    """Teacher pre-training: MSE between predicted and true velocity at shifted-uniform noise levels."""

    name = "flow_matching"
    config_class = FlowMatchingConfig

    def __init__(self, cfg: FlowMatchingConfig, train, device) -> None:
        super().__init__(cfg, train, device)
        if cfg.base:
            self.pipe = HunyuanVideoPipeline.from_pretrained(cfg.base, dtype=torch.float32)
            if cfg.transformer:
                self.pipe.transformer = HunyuanVideoTransformer3DModel(**cfg.transformer)
        else:
            self.pipe = build_embedded_pipeline(cfg)
        self.pipe.to(device)
        self.backbone = backbone_for(self.pipe)
        self.transformer = self.pipe.transformer
        self.transformer.requires_grad_(True)
        for m in (self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2):
            m.requires_grad_(False).eval()
        self.cache = self._load_or_build_cache()

    # ---- data cache -------------------------------------------------------------------------
    def _cache_path(self) -> Path:
        d = self.train_cfg.data
        vae_sd = self.pipe.vae.state_dict()
        h = hashlib.sha256()
        for k in sorted(vae_sd)[:8]:
            h.update(vae_sd[k].float().numpy().tobytes()[:4096])
        key = json.dumps(
            [self.cfg.text, self.cfg.base, self.cfg.cache_clips, d.num_frames, d.size, d.seed], sort_keys=True
        )
        h.update(key.encode())
        return Path(self.cfg.cache_dir) / f"latents-{h.hexdigest()[:16]}.safetensors"

    @torch.no_grad()
    def _load_or_build_cache(self) -> dict[str, torch.Tensor]:
        path = self._cache_path()
        if path.is_file():
            log.info("using latent cache %s", path)
            return load_file(path)
        d = self.train_cfg.data
        data = PortraitDataset("train", seed=d.seed, num_frames=d.num_frames, size=d.size)
        latents, conds = [], []
        chunk = 32
        for i in tqdm(range(0, self.cfg.cache_clips, chunk), desc="caching latents", dynamic_ncols=True):
            items = [data[j] for j in range(i, min(i + chunk, self.cfg.cache_clips))]
            video = torch.stack([it["video"] for it in items]).to(self.device)
            latents.append(self.backbone.encode_video(video).half().cpu())
            conds.append(self.backbone.encode_prompts([it["prompt"] for it in items]).to("cpu"))
        cond = Cond.cat(conds)
        empty = self.backbone.encode_prompts([""]).to("cpu")
        cache = {
            "latents": torch.cat(latents),
            "embeds": cond.embeds.half(),
            "mask": cond.mask.to(torch.uint8),
            "pooled": cond.pooled.half(),
            "empty_embeds": empty.embeds.half(),
            "empty_mask": empty.mask.to(torch.uint8),
            "empty_pooled": empty.pooled.half(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(cache, tmp)
        tmp.replace(path)
        log.info("wrote latent cache %s (%d clips)", path, len(cache["latents"]))
        return cache

    # ---- training ---------------------------------------------------------------------------
    def param_groups(self):
        return {"transformer": (list(self.transformer.parameters()), self.train_cfg.optim.lr)}

    def batch(self, step: int) -> dict:
        rng = np.random.default_rng([self.train_cfg.seed, step, 0xF10])
        c = self.cache
        idx = torch.from_numpy(rng.integers(len(c["latents"]), size=self.train_cfg.batch_size))
        drop = torch.from_numpy(rng.random(len(idx)) < self.cfg.caption_dropout)
        embeds, mask, pooled = c["embeds"][idx].float(), c["mask"][idx].long(), c["pooled"][idx].float()
        if drop.any():
            n = c["empty_embeds"].shape[1]
            embeds[drop] = 0
            mask[drop] = 0
            embeds[drop, :n] = c["empty_embeds"][0].float()
            mask[drop, :n] = c["empty_mask"][0].long()
            pooled[drop] = c["empty_pooled"][0].float()
        length = max(int(mask.sum(1).max()), 1)
        cond = Cond(embeds[:, :length], mask[:, :length], pooled).to(self.device)
        return {"x0": c["latents"][idx].float().to(self.device), "cond": cond}

    def loss(self, phase, batch):
        x0 = batch["x0"]  # (B, C, F, H, W)
        eps = torch.randn_like(x0)
        s = shift_sigmas(torch.rand(x0.shape[0], device=x0.device), self.cfg.shift)
        sv = s.view(-1, 1, 1, 1, 1)
        x = (1 - sv) * x0 + sv * eps
        v = self.backbone.velocity(x, s, batch["cond"])
        loss = torch.nn.functional.mse_loss(v, eps - x0)
        return loss, {}

    def trainable_state(self):
        return self.transformer.state_dict()

    def load_trainable_state(self, state):
        self.transformer.load_state_dict(state)

    def train(self, mode: bool = True) -> None:
        self.transformer.train(mode)

    # ---- validation and export --------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], steps: int) -> torch.Tensor:
        """Euler samples decoded to video in [-1, 1], (B, 3, F, H, W)."""
        d = self.train_cfg.data
        cond = self.backbone.encode_prompts(prompts)
        shape = self.backbone.latent_shape(d.num_frames, d.size, d.size)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        sigmas = get_sigmas(steps, self.cfg.shift)
        lat = sample_euler(lambda x, s: self.backbone.velocity(x, s, cond), noise.to(self.device), sigmas)
        return self.backbone.decode_latents(lat)

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        from w2svd.data import heldout_examples, tensor_to_video
        from w2svd.data.__main__ import grid_image

        examples = heldout_examples(self.cfg.val_prompts)
        video = self.sample([e.prompt for e in examples], [e.seed for e in examples], self.cfg.val_steps)
        clips = np.stack([tensor_to_video(v) for v in video])
        out_dir.mkdir(parents=True, exist_ok=True)
        grid_image(clips, [e.prompt for e in examples]).save(out_dir / f"step-{step:07d}.png")
        return {}

    def export(self, out_dir: Path) -> None:
        folder = out_dir / "pipeline"
        self.pipe.save_pretrained(folder)
        d = self.train_cfg.data
        defaults = {
            "height": d.size,
            "width": d.size,
            "num_frames": d.num_frames,
            "fps": 8,
            "num_inference_steps": 28,
            "guidance_scale": 1.0,
            "flow_shift": self.cfg.shift,
            **self.cfg.generation,
        }
        (folder / "generation_defaults.json").write_text(json.dumps(defaults, indent=1))
