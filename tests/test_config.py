import pytest

from w2svd.config import ConfigError, load_config
from w2svd.training.config import TrainConfig


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_overrides_and_types(tmp_path):
    p = write(tmp_path, "method: {name: vae}\nmax_steps: 10\noptim: {lr: 1e-3}\n")
    cfg = load_config(TrainConfig, p, ["max_steps=20", "optim.warmup_steps=5", "output_dir=/tmp/x", "seed=3"])
    assert cfg.max_steps == 20 and cfg.optim.warmup_steps == 5 and cfg.output_dir == "/tmp/x" and cfg.seed == 3
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML's "1e-3" string is read as a number


def test_unknown_key_names_the_valid_ones(tmp_path):
    p = write(tmp_path, "method: {name: vae}\nmax_step: 10\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['max_step'\].*max_steps"):
        load_config(TrainConfig, p)
    with pytest.raises(ConfigError, match="optim.*valid keys"):
        load_config(TrainConfig, write(tmp_path, "method: {name: vae}\n"), ["optim.learning_rate=1"])


def test_wrong_types_and_values_are_rejected(tmp_path):
    p = write(tmp_path, "method: {name: vae}\n")
    with pytest.raises(ConfigError, match="max_steps must be an integer"):
        load_config(TrainConfig, p, ["max_steps=ten"])
    with pytest.raises(ConfigError, match="num_frames=8 must be 4k\\+1"):
        load_config(TrainConfig, p, ["data.num_frames=8"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(TrainConfig, p, ["max_steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "missing.yaml")


def test_method_section_is_checked(tmp_path):
    from w2svd.trainer import resolve_method

    cfg = load_config(TrainConfig, write(tmp_path, "method: {name: vea}\n"))
    with pytest.raises(ConfigError, match="not a known method; valid: .*'vae'"):
        resolve_method(cfg)
    cfg = load_config(TrainConfig, write(tmp_path, "method: {name: vae, krop: 32}\n"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['krop'\].*crop"):
        resolve_method(cfg)


def test_shipped_configs_parse():
    from pathlib import Path

    import yaml

    from w2svd.benchmark import BenchmarkConfig
    from w2svd.trainer import resolve_method

    paths = sorted(Path(__file__).resolve().parents[1].glob("training/configs/*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        if "rows" in yaml.safe_load(path.read_text()):
            load_config(BenchmarkConfig, path)
        else:
            resolve_method(load_config(TrainConfig, path))
