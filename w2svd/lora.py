"""LoRA adapters on a frozen backbone (peft), and the diffusers-format export with w2svd metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
META_KEY = "w2svd"  # our metadata (sigmas, steps, guidance, alpha_weak, ...) in the safetensors header
LORA_KEY = "lora_adapter_metadata"  # diffusers' key for the peft config (keeps lora_alpha)


class LoraMismatchError(ValueError):
    """A LoRA file that does not fit the base it is loaded into."""


def lora_config(rank: int, alpha: float, target_regex: str, init: bool | str = True) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_regex, init_lora_weights=init)


def save_lora(
    transformer,
    adapter_name: str,
    out_dir: Path,
    metadata,
    pipeline_cls,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``adapter_name`` as diffusers-format ``pytorch_lora_weights.safetensors`` plus our metadata.

    Keys get the ``transformer.`` prefix that ``load_lora_weights`` filters on; the peft config is kept so
    lora_alpha survives; ``metadata`` (a ``GeneratorMeta``) goes under the ``w2svd`` header key and into
    ``w2svd_lora.json``.
    ``state_dict``: the adapter's full tensors by parameter name, when the module holds shards of them.
    """
    out_dir = Path(out_dir)
    state = get_peft_model_state_dict(transformer, state_dict=state_dict, adapter_name=adapter_name)
    config = transformer.peft_config[adapter_name].to_dict()
    pipeline_cls.save_lora_weights(
        out_dir,
        transformer_lora_layers={k: v.detach().cpu().contiguous() for k, v in state.items()},
        transformer_lora_adapter_metadata=config,
    )
    path = out_dir / WEIGHT_NAME
    with safe_open(path, "pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header[META_KEY] = metadata.to_json()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata=header)
    tmp.replace(path)
    metadata.write_json(out_dir / "w2svd_lora.json")
    return path


def lora_file(path: str | Path) -> Path:
    path = Path(path)
    return path / WEIGHT_NAME if path.is_dir() else path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Our metadata from a LoRA file (or its folder); {} for LoRAs trained elsewhere."""
    path = lora_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA weights at {path}; expected a folder with {WEIGHT_NAME} or the file itself")
    if path.suffix != ".safetensors":
        raise LoraMismatchError(f"{path} is not a .safetensors file; w2svd loads LoRA weights only from safetensors")
    try:
        with safe_open(path, "pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise LoraMismatchError(f"{path} is not a readable safetensors file ({e}); re-download or re-export it") from e
    return json.loads(header[META_KEY]) if META_KEY in header else {}


def check_lora_fits(transformer, path: str | Path) -> None:
    """Raise LoraMismatchError naming the file, the base and the first key that does not fit."""
    path = lora_file(path)
    modules = dict(transformer.named_modules())
    base = getattr(transformer.config, "_name_or_path", "") or type(transformer).__name__
    with safe_open(path, "pt") as f:
        for key in sorted(f.keys()):
            if "lora" not in key:
                raise LoraMismatchError(f"{path}: key {key!r} is not a LoRA key (all keys must contain 'lora')")
            name = key.removeprefix("transformer.")
            module_name = name.split(".lora_")[0]
            module = modules.get(module_name)
            if module is None or not hasattr(module, "weight"):
                raise LoraMismatchError(f"{path} does not fit base {base}: no module {module_name!r} (key {key!r})")
            shape = f.get_slice(key).get_shape()
            weight = module.weight if not hasattr(module, "base_layer") else module.base_layer.weight
            if ".lora_A." in key and shape[1] != weight.shape[1]:
                raise LoraMismatchError(
                    f"{path} does not fit base {base}: {key!r} has input size {shape[1]}, module has {weight.shape[1]}"
                )
            if ".lora_B." in key and shape[0] != weight.shape[0]:
                raise LoraMismatchError(
                    f"{path} does not fit base {base}: {key!r} has output size {shape[0]}, module has {weight.shape[0]}"
                )


def check_lora_values(path: str | Path) -> None:
    """Every tensor finite; every module the file's own peft config targets has both its lora_A and lora_B."""
    path = lora_file(path)
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        for key in sorted(keys):
            if not torch.isfinite(f.get_tensor(key)).all():
                raise LoraMismatchError(f"{path}: {key!r} holds NaN or infinite values; re-export or re-download it")
    modules = {k.split(".lora_")[0] for k in keys}
    for module in sorted(modules):
        for part in ("lora_A", "lora_B"):
            if f"{module}.{part}.weight" not in keys:
                raise LoraMismatchError(f"{path}: {module!r} has no {part} weight; the file is incomplete")


def lora_peft_config(path: str | Path) -> dict | None:
    """The peft LoraConfig fields diffusers stored in the file's header, or None (a LoRA trained elsewhere)."""
    with safe_open(lora_file(path), "pt") as f:
        header = f.metadata() or {}
    if LORA_KEY not in header:
        return None
    return {k.removeprefix("transformer."): v for k, v in json.loads(header[LORA_KEY]).items()}


def check_lora_targets(transformer, path: str | Path, config: dict | None) -> None:
    """Every module of ``transformer`` that the LoRA's recorded ``target_modules`` match must be in the file."""
    if not config or not config.get("target_modules"):
        return
    from peft.tuners.tuners_utils import check_target_module_exists

    path = lora_file(path)
    with safe_open(path, "pt") as f:
        present = {k.removeprefix("transformer.").split(".lora_")[0] for k in f.keys()}
    lc = LoraConfig(target_modules=config["target_modules"], exclude_modules=config.get("exclude_modules"))
    wanted = [
        name
        for name, module in transformer.named_modules()
        if (isinstance(module, torch.nn.Linear) or hasattr(module, "base_layer"))  # a peft layer once adapted
        and ".lora_" not in name
        and ".base_layer" not in name
        and check_target_module_exists(lc, name)
    ]
    missing = [name for name in wanted if name not in present]
    if missing:
        raise LoraMismatchError(
            f"{path} is incomplete: {len(missing)} of the {len(wanted)} modules its config targets have no weights "
            f"(first: {missing[0]!r}); re-export or re-download it"
        )


def trainable_lora_params(transformer, adapter_name: str) -> list[torch.nn.Parameter]:
    return [p for n, p in transformer.named_parameters() if f".{adapter_name}." in n]
