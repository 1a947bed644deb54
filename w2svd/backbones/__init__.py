"""One adapter per backbone family behind one interface (see base.Backbone)."""

from w2svd.backbones.base import Backbone, Cond
from w2svd.backbones.hunyuan import HunyuanVideoBackbone
from w2svd.backbones.wan import WanBackbone

BACKBONES: dict[str, type[Backbone]] = {"HunyuanVideoPipeline": HunyuanVideoBackbone, "WanPipeline": WanBackbone}


def backbone_for(pipe) -> Backbone:
    """The adapter for a loaded diffusers pipeline, chosen by its class name."""
    name = type(pipe).__name__
    if name not in BACKBONES:
        raise ValueError(f"no w2svd backbone adapter for {name}; supported: {sorted(BACKBONES)}")
    return BACKBONES[name](pipe)


__all__ = ["BACKBONES", "Backbone", "Cond", "HunyuanVideoBackbone", "WanBackbone", "backbone_for"]
