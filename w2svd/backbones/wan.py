"""Wan 2.1 family: diffusers' WanPipeline (text-to-video; UMT5 text encoder, AutoencoderKLWan, WanTransformer3DModel).

Wan is a rectified-flow model like HunyuanVideo: its transformer predicts v = eps - x0 at timestep
1000 * sigma, so the same samplers, losses and LoRA roles apply. Differences the adapter hides: text
embeddings come zero-padded to a fixed length with no attention mask, there is no pooled projection and no
guidance embedding (CFG is a second pass), and latents are normalised per channel with the VAE's
``latents_mean`` / ``latents_std`` instead of one scaling factor.
"""

from __future__ import annotations

import torch

from w2svd.backbones.base import Backbone, Cond


class WanBackbone(Backbone):
    # Self- and cross-attention projections and the feed-forward of every block (not the embedders or the head).
    lora_target_regex = (
        r".*blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.(0\.proj|2))"
    )
    max_sequence_length = 226  # WanPipeline's default prompt length

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        pipe = self.pipe
        embeds, _ = pipe.encode_prompt(
            prompt=prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
            device=pipe._execution_device,
        )
        return Cond(embeds)  # zero beyond each prompt's tokens, as the pipeline passes them

    def velocity(self, x: torch.Tensor, sigma, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
        t = self.transformer
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        return t(
            hidden_states=x.to(t.dtype),
            timestep=sigma * 1000,
            encoder_hidden_states=cond.embeds.to(t.dtype),
            return_dict=False,
        )[0].float()

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.vae.config
        shape = (1, c.z_dim, 1, 1, 1)
        mean = torch.tensor(c.latents_mean, device=like.device, dtype=torch.float32).view(shape)
        std = torch.tensor(c.latents_std, device=like.device, dtype=torch.float32).view(shape)
        return mean, std

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        mu = vae.encode(video.to(vae.device, vae.dtype)).latent_dist.mode().float()
        mean, std = self._latent_stats(mu)
        return (mu - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        mean, std = self._latent_stats(latents)
        return vae.decode((latents.float() * std + mean).to(vae.device, vae.dtype)).sample.float()

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    def feature_module(self, transformer: torch.nn.Module) -> torch.nn.Module:
        return transformer.blocks[-1]  # the last block's video tokens (B, N, D)
