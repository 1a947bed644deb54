"""One adapter per backbone family behind one interface (see base.Backbone)."""

from w2svd.backbones.base import Backbone, Cond
from w2svd.backbones.hunyuan import HunyuanVideoBackbone

BACKBONES: dict[str, type[Backbone]] = {"HunyuanVideoPipeline": HunyuanVideoBackbone}


def backbone_for(pipe) -> Backbone:
    """The adapter for a loaded diffusers pipeline, chosen by its class name."""
    name = type(pipe).__name__
    if name not in BACKBONES:
        raise ValueError(f"no w2svd backbone adapter for {name}; supported: {sorted(BACKBONES)}")
    return BACKBONES[name](pipe)


__all__ = ["BACKBONES", "Backbone", "Cond", "HunyuanVideoBackbone", "backbone_for"]
