"""The synthetic talking-portrait world: attributes, renderer, captions, datasets."""

from w2svd.data.attributes import APPEARANCE_NAMES, ATTRIBUTE_NAMES, ATTRIBUTES, Portrait, sample_portrait
from w2svd.data.captions import caption, vocabulary
from w2svd.data.dataset import (
    HELDOUT_SEED,
    Example,
    PortraitDataset,
    heldout_examples,
    labels_of,
    render_examples,
    step_batch,
    tensor_to_video,
    video_to_tensor,
)
from w2svd.data.render import render_clip

__all__ = [
    "APPEARANCE_NAMES",
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "HELDOUT_SEED",
    "Example",
    "Portrait",
    "PortraitDataset",
    "caption",
    "heldout_examples",
    "labels_of",
    "render_clip",
    "render_examples",
    "sample_portrait",
    "step_batch",
    "tensor_to_video",
    "video_to_tensor",
    "vocabulary",
]
