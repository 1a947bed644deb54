"""Evaluation: feature networks trained on the portrait world, Frechet distances and prompt adherence."""

from w2svd.eval.features import FeatureNets, load_feature_nets
from w2svd.eval.metrics import (
    Embedding,
    GenerateFn,
    adherence,
    embed,
    evaluate_generator,
    fd_clip,
    fd_frame,
    format_report,
    frechet_distance,
    real_generator,
)

__all__ = [
    "Embedding",
    "FeatureNets",
    "GenerateFn",
    "adherence",
    "embed",
    "evaluate_generator",
    "fd_clip",
    "fd_frame",
    "format_report",
    "frechet_distance",
    "load_feature_nets",
    "real_generator",
]
