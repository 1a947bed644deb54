"""The interface a video DiT backbone family implements for sampling, training and distillation."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Cond:
    """Text conditioning for a batch; fields a family does not use stay None."""

    embeds: torch.Tensor  # (B, L, D)
    mask: torch.Tensor | None = None  # (B, L)
    pooled: torch.Tensor | None = None  # (B, P)

    def to(self, device, dtype=None) -> Cond:
        def mv(t, is_mask=False):
            if t is None:
                return None
            return t.to(device) if is_mask or dtype is None else t.to(device, dtype)

        return Cond(mv(self.embeds), mv(self.mask, True), mv(self.pooled))

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        """Concatenate along the batch, right-padding text to the longest sequence."""
        length = max(c.embeds.shape[1] for c in conds)

        def pad(t, n):
            return (
                torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1]))
                if t.dim() == 3
                else torch.nn.functional.pad(t, (0, n - t.shape[1]))
            )

        embeds = torch.cat([pad(c.embeds, length) for c in conds])
        mask = None if conds[0].mask is None else torch.cat([pad(c.mask, length) for c in conds])
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        return Cond(embeds, mask, pooled)


class Backbone:
    """A pipeline's transformer, VAE and text encoders reached through one small interface."""

    lora_target_regex: str = ""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae

    def encode_prompts(self, prompts: list[str]) -> Cond:
        raise NotImplementedError

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
        """The model's flow prediction v = eps - x0 at noise level sigma (a float or (B,)); ``guidance`` is the
        embedded guidance value, ignored by a model without a guidance embedding (see ``guidance_embedded``)."""
        raise NotImplementedError

    @property
    def guidance_embedded(self) -> bool:
        """Whether ``velocity`` reads ``guidance`` (a guidance-distilled model with a guidance embedding)."""
        return False

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> scaled latents (B, C, F', H', W')."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B, 3, F, H, W) in [-1, 1]."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        """C, the channels of the latents the transformer denoises."""
        raise NotImplementedError

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latents of a (num_frames, height, width) video, from the pipeline's VAE factors."""
        p = self.pipe
        return (
            self.latent_channels,
            (num_frames - 1) // p.vae_scale_factor_temporal + 1,
            height // p.vae_scale_factor_spatial,
            width // p.vae_scale_factor_spatial,
        )

    def feature_module(self, transformer: torch.nn.Module) -> torch.nn.Module:
        """The block of ``transformer`` whose output tokens (B, N, D) feed the optional discriminator head."""
        raise NotImplementedError

    def feature_dim(self) -> int:
        """D, the width of ``feature_module``'s output tokens (the attention width of both DiT families)."""
        c = self.transformer.config
        return c.num_attention_heads * c.attention_head_dim
