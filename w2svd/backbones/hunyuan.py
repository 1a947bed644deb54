"""HunyuanVideo family: diffusers' HunyuanVideoPipeline (13B or the embedded tiny one)."""

from __future__ import annotations

import torch

from w2svd.backbones.base import Backbone, Cond


class HunyuanVideoBackbone(Backbone):
    # Attention projections and feed-forward linears of the double- and single-stream blocks only
    # (not the token refiner, not the top-level proj_out).
    lora_target_regex = (
        r".*(transformer_blocks|single_transformer_blocks)\.\d+\."
        r"(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)|"
        r"ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
    )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        pipe = self.pipe
        embeds, pooled, mask = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe._execution_device)
        length = max(int(mask.sum(1).max()), 1)  # right padding beyond the longest prompt is masked anyway
        return Cond(embeds[:, :length], mask[:, :length], pooled)

    @property
    def guidance_embedded(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)  # True for HunyuanVideo 13B

    def velocity(self, x: torch.Tensor, sigma, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
        t = self.transformer
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        g = None
        if self.guidance_embedded:
            g = torch.full((x.shape[0],), guidance * 1000.0, device=x.device, dtype=t.dtype)
        return t(
            hidden_states=x.to(t.dtype),
            timestep=sigma * 1000,
            encoder_hidden_states=cond.embeds.to(t.dtype),
            encoder_attention_mask=cond.mask,
            pooled_projections=cond.pooled.to(t.dtype),
            guidance=g,
            return_dict=False,
        )[0].float()

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        return vae.encode(video.to(vae.device, vae.dtype)).latent_dist.mode().float() * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.device, vae.dtype)).sample.float()

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels

    def feature_module(self, transformer: torch.nn.Module) -> torch.nn.Module:
        return transformer.transformer_blocks[-1]  # the last double-stream block: (video tokens, text tokens)
