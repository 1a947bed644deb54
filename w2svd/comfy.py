"""Our diffusers-format HunyuanVideo LoRA -> original (ComfyUI / musubi-tuner) key layout.

The inverse of diffusers' ``_convert_hunyuan_video_lora_to_diffusers``. The original model fuses q/k/v (and, in
single blocks, the MLP input) into one linear, so separate LoRAs on those projections become one LoRA of
summed rank: lora_A stacked, lora_B block-diagonal. That is exact: every B @ A product is unchanged. The
peft scale (lora_alpha / r) is folded into lora_B, so no alpha keys are needed (loaders then use scale 1).
diffusers' converter assumes hidden size 3072 when splitting single blocks: only 13B-sized LoRAs round-trip
through diffusers; ComfyUI reads any size.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

COMFY_WEIGHT_NAME = "pytorch_lora_weights_comfy.safetensors"
PREFIX = "diffusion_model."

# (our block prefix, original block prefix, {original linear: our linears, fused in this order})
DOUBLE = {
    "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "img_attn_proj": ["attn.to_out.0"],
    "txt_attn_proj": ["attn.to_add_out"],
    "img_mlp.fc1": ["ff.net.0.proj"],
    "img_mlp.fc2": ["ff.net.2"],
    "txt_mlp.fc1": ["ff_context.net.0.proj"],
    "txt_mlp.fc2": ["ff_context.net.2"],
}
SINGLE = {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "linear2": ["proj_out"]}
KEY = re.compile(
    r"^(?:transformer\.)?(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.lora_([AB])\.weight$"
)


def _scale(config: dict, module: str, rank: int) -> float:
    """peft's scale for ``module``: alpha / r (or alpha / sqrt(r) with rslora), honouring the patterns."""
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(pattern, module):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def to_original(state: dict[str, torch.Tensor], config: dict | None = None) -> dict[str, torch.Tensor]:
    """Diffusers-format LoRA tensors (``transformer.`` prefix optional) -> ``diffusion_model.`` original keys."""
    config = config or {}
    modules: dict[tuple[str, int], dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        m = KEY.match(key)
        if m is None:
            raise ValueError(f"LoRA key {key!r} is not a HunyuanVideo block linear; only block LoRAs can be converted")
        kind, index, name, ab = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        modules.setdefault((kind, index), {}).setdefault(name, {})[ab] = tensor
    out: dict[str, torch.Tensor] = {}
    for (kind, index), linears in sorted(modules.items()):
        table, block = (DOUBLE, "double_blocks") if kind == "transformer_blocks" else (SINGLE, "single_blocks")
        unknown = sorted(set(linears) - {n for names in table.values() for n in names})
        if unknown:
            raise ValueError(f"{kind}.{index}: no original-format counterpart for {unknown}")
        for original, names in table.items():
            present = [n for n in names if n in linears]
            if not present:
                continue
            if len(present) != len(names):
                missing = sorted(set(names) - set(present))
                raise ValueError(f"{kind}.{index}: {original} fuses {names}, but the LoRA lacks {missing}")
            a_parts, b_parts = [], []
            for n in names:
                a, b = linears[n]["A"], linears[n]["B"]  # (r, in), (out, r)
                a_parts.append(a)
                b_parts.append(b * _scale(config, f"{kind}.{index}.{n}", a.shape[0]))
            out[f"{PREFIX}{block}.{index}.{original}.lora_A.weight"] = torch.cat(a_parts).contiguous()
            out[f"{PREFIX}{block}.{index}.{original}.lora_B.weight"] = torch.block_diag(*b_parts).contiguous()
    return out


def export_comfy(lora_path: str | Path, out_path: str | Path) -> Path:
    """Write the original-format copy of a diffusers-format LoRA file, keeping its ``w2svd`` metadata."""
    with safe_open(lora_path, "pt") as f:
        header = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    raw = json.loads(header.get("lora_adapter_metadata", "{}"))
    config = {k.removeprefix("transformer."): v for k, v in raw.items()}  # diffusers prefixes the peft config
    meta = {k: v for k, v in header.items() if k == "w2svd"}
    save_file(to_original(state, config), out_path, metadata={**meta, "format": "pt"})
    return Path(out_path)
