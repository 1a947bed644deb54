"""Benchmark figures: quality vs NFE for every row, and validation FD-clip vs training for distilled runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def quality_vs_nfe(rows: list[dict[str, Any]], path: str | Path) -> None:
    """FD-frame and FD-clip (log scale) against NFE, one labelled point per generated row."""
    points = [r for r in rows if r.get("nfe")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    real = next((r for r in rows if r.get("kind") == "real"), None)
    for ax, key, label in ((axes[0], "fd_frame", "FD-frame"), (axes[1], "fd_clip", "FD-clip")):
        for r in points:
            ax.scatter(r["nfe"], r[key], s=28)
            ax.annotate(r["name"], (r["nfe"], r[key]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(r["nfe"] for r in points) / 1.3, max(r["nfe"] for r in points) * 1.6)
        ax.set_xlabel("NFE (transformer evaluations per video)")
        floor = f"; real-vs-real floor {real[key]:.3g}" if real is not None else ""
        ax.set_ylabel(f"{label} (lower is better{floor})")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Quality vs NFE on the held-out portrait pairs")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(curves: dict[str, list[dict[str, float]]], path: str | Path) -> None:
    """Validation FD-clip and motion adherence against generator updates, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in curves.items():
        x = [p.get("generator_updates", p["step"]) for p in points]
        axes[0].plot(x, [p["fd_clip"] for p in points], marker="o", ms=3, label=name)
        axes[1].plot(x, [p["adherence/motion"] for p in points], marker="o", ms=3, label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("validation FD-clip (lower is better)")
    axes[1].set_ylabel("validation motion adherence")
    for ax in axes:
        ax.set_xlabel("generator updates")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Distillation runs: validation samples during training")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
