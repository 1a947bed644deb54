"""training/configs/tiny_w2svd.yaml as a TrainConfig for tests, with dotted overrides given as keyword names."""

from pathlib import Path

import yaml

from w2svd.config import from_dict
from w2svd.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path, base_dir=None, **over) -> TrainConfig:
    """The tiny W2SVD config writing under ``tmp_path``; ``base_dir`` swaps the random base for a pipeline folder."""
    data = yaml.safe_load((ROOT / "training/configs/tiny_w2svd.yaml").read_text())
    data["output_dir"] = str(tmp_path / "run")
    data["method"]["cache_dir"] = str(tmp_path / "cache")
    if base_dir is not None:
        data["method"].pop("random_base")
        data["method"]["base"] = str(base_dir)
    for key, value in over.items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    return from_dict(TrainConfig, data)
