"""Issue 18: no code from checkpoints, checkpoints that never lose the last good state, one run per folder,
config changes refused on resume, clear errors on a full disk."""

import collections
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_training import vae_cfg

from w2svd.config import ConfigError
from w2svd.trainer import train
from w2svd.training import checkpoint as ckpt_mod
from w2svd.training.checkpoint import CheckpointError, list_checkpoints, load_latest, prune, save_checkpoint
from w2svd.training.run_folder import HISTORY, RunLock, RunLockedError


class RunsAShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def rewrite_meta(ckpt: Path) -> None:
    """What an attacker does after replacing a file: make meta.json's checksums match again."""
    files = {p.name: ckpt_mod.sha256_file(p) for p in sorted(ckpt.iterdir()) if p.name != ckpt_mod.META}
    (ckpt / ckpt_mod.META).write_text(json.dumps({"step": 2, "files": files}))


def test_a_crafted_training_state_is_refused_and_runs_nothing(tmp_path):
    out = train(vae_cfg(tmp_path / "r", max_steps=2), progress=False)
    last = list_checkpoints(out / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "x": RunsAShellCommand(marker)}, last / "training_state.pt")
    rewrite_meta(last)
    with pytest.raises(CheckpointError, match=r"refusing to load .*training_state.pt.*GLOBAL posix.system"):
        train(vae_cfg(tmp_path / "r", max_steps=4), progress=False)
    assert not marker.exists()


def test_the_training_state_holds_plain_data_only(tmp_path):
    out = train(vae_cfg(tmp_path / "r", max_steps=2), progress=False)
    last = list_checkpoints(out / "checkpoints")[-1]
    torch.load(last / "training_state.pt", weights_only=True)  # no allow-list needed for what we write now
    _, state, _ = load_latest(out / "checkpoints")
    assert isinstance(state["rng"]["numpy"][1], list)


def fake_checkpoints(root: Path, steps: list[int]) -> list[Path]:
    for s in steps:
        save_checkpoint(root, s, {"w": torch.full((4,), float(s))}, {"step_seen": s}, limit=len(steps))
    return list_checkpoints(root)


def damage(ckpt: Path) -> None:
    with open(ckpt / "trainable.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"garbage!")
    ckpt_mod._verified.clear()  # as a fresh process would see it


def test_pruning_never_deletes_the_newest_good_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    one, two, three = fake_checkpoints(root, [1, 2, 3])
    damage(two)
    damage(three)
    prune(root, limit=1)
    assert list_checkpoints(root) == [one]  # the damaged newer ones do not count and are not trusted
    assert sorted(p.name for p in root.iterdir()) == [
        "checkpoint-00000001",
        "damaged-checkpoint-00000002",
        "damaged-checkpoint-00000003",
    ]
    tensors, state, path = load_latest(root)
    assert path == one and state["step"] == 1 and torch.equal(tensors["w"], torch.ones(4))


def test_a_run_resumes_from_the_newest_good_checkpoint_and_keeps_it(tmp_path):
    out = train(vae_cfg(tmp_path / "r", max_steps=3, checkpoint_every=1, checkpoints_total_limit=3), progress=False)
    first, second, third = list_checkpoints(out / "checkpoints")
    damage(second)
    damage(third)
    cfg = vae_cfg(tmp_path / "r", max_steps=4, checkpoint_every=1, checkpoints_total_limit=2)
    train(cfg, progress=False)  # resumes at step 1, rewrites 2, moves the damaged 3 aside
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["checkpoint-00000003", "checkpoint-00000004", "damaged-checkpoint-00000003"]
    assert json.loads((out / "train_time.json").read_text())["steps"] == 4


def test_a_second_run_on_the_same_folder_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    with RunLock(out):
        with pytest.raises(RunLockedError, match=rf"in use by another training run \(PID {os.getpid()} on"):
            train(vae_cfg(out, max_steps=1), progress=False)
    train(vae_cfg(out, max_steps=1), progress=False)  # free again once the holder is gone
    assert (out / ".lock").read_text() == ""


def test_a_changed_config_is_refused_on_resume_unless_allowed_and_every_config_is_kept(tmp_path):
    out = train(vae_cfg(tmp_path / "r", max_steps=2), progress=False)
    with pytest.raises(ConfigError, match=r"optim.lr: 0.001 -> 0.002.*--allow-config-change"):
        train(vae_cfg(out, max_steps=3, optim={"lr": 2e-3}), progress=False)
    train(vae_cfg(out, max_steps=3), progress=False)  # a longer run is a run-control change: allowed
    train(vae_cfg(out, max_steps=4, optim={"lr": 2e-3}), progress=False, allow_config_change=True)
    # the new learning rate is the one trained with, not the one the checkpoint's optimiser was created with
    opt_states = load_latest(out / "checkpoints")[1]["optimizers"].values()
    assert {(g["lr"], g["initial_lr"]) for o in opt_states for g in o["param_groups"]} == {(2e-3, 2e-3)}
    history = sorted((out / HISTORY).glob("config-*.yaml"))
    assert len(history) == 3 and "lr: 0.002" in (out / "config.yaml").read_text()
    assert "max_steps: 2" in history[0].read_text() and "lr: 0.001" in history[1].read_text()
    branch = tmp_path / "branch"  # a copy of the folder resumes as a branch of the run: no flag needed
    shutil.copytree(out, branch)
    train(vae_cfg(branch, max_steps=5, optim={"lr": 2e-3}), progress=False)
    assert json.loads((branch / "train_time.json").read_text())["steps"] == 5


DiskUsage = collections.namedtuple("DiskUsage", "total used free")


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    out = train(vae_cfg(tmp_path / "r", max_steps=2), progress=False)
    before = list_checkpoints(out / "checkpoints")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: DiskUsage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(CheckpointError, match=r"not enough disk space .* MiB are free.*previous checkpoint is kept"):
        train(vae_cfg(out, max_steps=4), progress=False)
    assert list_checkpoints(out / "checkpoints") == before and load_latest(out / "checkpoints")[1]["step"] == 2


def test_a_write_error_names_the_step_and_the_disk(tmp_path, monkeypatch):
    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", no_space)
    with pytest.raises(CheckpointError, match=r"step 3 to .*No space left on device.*MiB free"):
        save_checkpoint(tmp_path, 3, {"w": torch.ones(2)}, {}, limit=2)
    assert list(tmp_path.iterdir()) == []  # no half-written folder left behind


# ---- configs: --dry-run refuses what the run would refuse ------------------------------------------------------
@pytest.fixture(scope="module")
def run_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_script", Path(__file__).parents[1] / "training" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("threads=-1", "config.threads=-1 must be >= 0"),
        ("method.generator_rank=0", "method.generator_rank=0 must be >= 1"),
        ("method.fake_lora_alpha=0", "method.fake_lora_alpha=0.0 must be > 0"),
        ("optim.eps=0", "optim.eps=0.0 must be > 0"),
        ("optim.betas=[0.9,1.0]", r"optim.betas=\[0.9, 1.0\] must both be in \[0, 1\)"),
        ("validate_every=-1", "config.validate_every=-1 must be >= 0"),
        ("output_dir=", "config.output_dir='' must be a non-empty string"),
        ("output_dir='  '", "config.output_dir='  ' must be a non-empty string"),
        ("method.real_cfg_scale=0.5", r"method.real_cfg_scale=0.5 must be in \[1, 30\]"),
        ("method.real_cfg_levels=[0.7,0.5]", r"method.real_cfg_levels=\[0.7, 0.5\] must be two noise levels"),
        ("method.real_cfg_levels=[0.5]", r"method\(w2svd\).real_cfg_levels must be a list of 2 items, got \[0.5\]"),
        ("method.real_cfg_outside_scale=1.5", r"method.real_cfg_outside_scale=1.5 has no effect: .* covers every"),
        ("method.real_cfg_outside_scale=0.5", r"method.real_cfg_outside_scale=0.5 .*in \[1, "),
        ("method.dm_s_min=0.99", "method.dm_s_min=0.99 must be below method.dm_s_max=0.98"),
        ("method.noise_shift=0", "method.noise_shift=0.0 must be > 0"),
    ],
)
def test_dry_run_refuses_bad_values(run_script, capsys, override, message):
    config = Path(__file__).parents[1] / "training" / "configs" / "embedded_w2svd.yaml"
    assert run_script.main(["--config", str(config), "--dry-run", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and __import__("re").search(message, err), err


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    from w2svd.config import load_config
    from w2svd.training.config import TrainConfig

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nmethod: {name: vae}\noutput_dir: *a11\n")
    with pytest.raises(ConfigError, match=r"YAML alias \*a0 at line 2: aliases and merge keys are not allowed"):
        load_config(TrainConfig, bomb)
    with pytest.raises(ConfigError, match="alias"):
        load_config(TrainConfig, None, ["method={name: vae}", "output_dir=[&x a, *x]"])


def test_a_corrupt_latent_cache_is_moved_aside_and_rebuilt(tmp_path, tiny_pipeline_dir):
    from diffusers import HunyuanVideoPipeline

    from w2svd.backbones import backbone_for
    from w2svd.data import PortraitDataset
    from w2svd.data.latent_cache import load_or_build

    backbone = backbone_for(HunyuanVideoPipeline.from_pretrained(tiny_pipeline_dir))
    data = PortraitDataset("train", num_frames=5, size=32)
    first = load_or_build(backbone, data, 4, tmp_path, chunk=4)
    (path,) = tmp_path.glob("latents-*.safetensors")
    assert (tmp_path / (path.name + ".sha256")).is_file()
    with open(path, "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\x7f" * 16)  # would train on garbage: fp16 0x7f7f is ~6e4
    again = load_or_build(backbone, data, 4, tmp_path, chunk=4)
    assert path.with_suffix(".corrupt").is_file()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_flags_may_come_between_overrides(run_script, capsys):
    config = Path(__file__).parents[1] / "training" / "configs" / "embedded_w2svd.yaml"
    argv = ["--config", str(config), "max_steps=7", "--dry-run", "method.generator_rank=3", "--no-progress"]
    assert run_script.main(argv) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and "generator_rank: 3" in out
