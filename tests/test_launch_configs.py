"""The shipped accelerate configs: they parse, and FSDP wraps exactly the blocks that hold the LoRAs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch_env(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file CONFIG` gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "training/run.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_fsdp_config_shards_the_lora_blocks(monkeypatch):
    from accelerate import init_empty_weights
    from accelerate.utils import FullyShardedDataParallelPlugin
    from diffusers import HunyuanVideoTransformer3DModel

    from w2svd.backbones.hunyuan import HunyuanVideoBackbone

    for key, value in launch_env(ROOT / "training/accelerate/fsdp_8gpu.yaml").items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.sharding_strategy.name == "FULL_SHARD" and plugin.use_orig_params
    assert plugin.activation_checkpointing and plugin.fsdp_version == 1
    with init_empty_weights():
        model = HunyuanVideoTransformer3DModel(num_layers=2, num_single_layers=2, num_refiner_layers=1)
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ in plugin.transformer_cls_names_to_wrap}
    assert len(wrapped) == 4
    targets = [n for n, _ in model.named_modules() if re.fullmatch(HunyuanVideoBackbone.lora_target_regex, n)]
    assert targets and all(any(t.startswith(w + ".") for w in wrapped) for t in targets)


@pytest.mark.parametrize("name", ["fsdp_8gpu.yaml", "deepspeed_zero3_8gpu.yaml"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "training/accelerate" / name))
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    assert (cfg.deepspeed_config.get("zero_stage") == 3) == ("deepspeed" in name)
