"""The shipped accelerate configs: they parse, FSDP wraps exactly the blocks that hold the LoRAs, and the
training loop reads its sharding settings from them (DeepSpeed is refused with a clear error)."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from w2svd import trainer as loop
from w2svd.config import ConfigError, load_config
from w2svd.training.config import TrainConfig
from w2svd.training.sharding import wrap_units

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
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert not plugin.activation_checkpointing  # the training config's gradient_checkpointing does it
    with init_empty_weights():
        model = HunyuanVideoTransformer3DModel(num_layers=2, num_single_layers=2, num_refiner_layers=1)
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ in plugin.transformer_cls_names_to_wrap}
    assert len(wrapped) == 4
    targets = [n for n, _ in model.named_modules() if re.fullmatch(HunyuanVideoBackbone.lora_target_regex, n)]
    assert targets and all(any(t.startswith(w + ".") for w in wrapped) for t in targets)

    # what the training loop takes from it (it shards with these; tests/test_distributed.py runs the sharding)
    cfg = load_config(TrainConfig, ROOT / "training/configs/tiny_w2svd.yaml", [])
    fake = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))
    settings = loop.fsdp_settings(cfg, fake)
    assert settings == {"classes": plugin.transformer_cls_names_to_wrap, "reshard_after_forward": True}
    assert {type(m).__name__ for m in wrap_units(model, settings["classes"])} == set(settings["classes"])
    assert len(wrap_units(model)) > len(wrapped)  # the default, the model's _no_split_modules, has more units


def test_loop_sharding_choice_and_deepspeed_refusal():
    cfg = load_config(TrainConfig, ROOT / "training/configs/tiny_w2svd.yaml", [])
    plain = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, state=SimpleNamespace())
    assert loop.fsdp_settings(cfg, plain) is None
    sharded = load_config(TrainConfig, ROOT / "training/configs/tiny_w2svd.yaml", ["sharding=fsdp"])
    assert loop.fsdp_settings(sharded, plain) == {"classes": None, "reshard_after_forward": True}
    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace())
    with pytest.raises(ConfigError, match="DeepSpeed is not supported.*accelerate/fsdp_8gpu.yaml"):
        loop.fsdp_settings(cfg, deepspeed)
    with pytest.raises(ConfigError, match="config.sharding='zero3' must be 'none' or 'fsdp'"):
        load_config(TrainConfig, ROOT / "training/configs/tiny_w2svd.yaml", ["sharding=zero3"])


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "training/accelerate").glob("*.yaml")))
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "training/accelerate" / name))
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    assert cfg.distributed_type == "FSDP"  # the loop refuses DeepSpeed (test above)
