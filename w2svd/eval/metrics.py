"""Frechet distances over the portrait feature networks (FD-frame ~ FID, FD-clip ~ FVD) and prompt adherence."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch

from w2svd.data import APPEARANCE_NAMES, ATTRIBUTE_NAMES, Example, heldout_examples, labels_of, render_examples
from w2svd.eval.features import NUM_FRAMES, SIZE, FeatureNets, clips_to_tensor, load_feature_nets

# generate_fn(prompts, seeds) -> uint8 (N, F, H, W, 3): the one thing a generator must provide.
GenerateFn = Callable[[list[str], list[int]], np.ndarray]


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets.

    tr(sqrtm(Sa Sb)) is computed as the trace of sqrtm(sqrt(Sa) Sb sqrt(Sa)), a symmetric PSD matrix, so
    rounding can never produce the imaginary parts that plain sqrtm(Sa @ Sb) returns.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N>=2, D) feature arrays with the same D; got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    evals, evecs = scipy.linalg.eigh(cov_a)
    sqrt_a = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    inner = scipy.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    tr_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
    fd = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean
    return float(max(fd, 0.0))


@dataclasses.dataclass
class Embedding:
    """What the feature networks see in a set of clips; compute once, reuse for every metric."""

    frame_features: np.ndarray  # (N*F, D_frame)
    clip_features: np.ndarray  # (N, D_clip)
    frame_predictions: np.ndarray  # (N, len(APPEARANCE_NAMES)): frame-encoder log-probs averaged over frames
    frame_single_predictions: np.ndarray  # (N*F, len(APPEARANCE_NAMES)): per-frame classes
    clip_predictions: np.ndarray  # (N, len(ATTRIBUTE_NAMES))


@torch.inference_mode()
def embed(clips: np.ndarray, nets: FeatureNets | None = None, batch_size: int = 32) -> Embedding:
    """Run both encoders over uint8 clips (N, F, 64, 64, 3)."""
    nets = nets or load_feature_nets()
    if clips.ndim == 5 and clips.shape[1] < 2:
        raise ValueError(f"clips need >= 2 frames for the clip encoder; got shape {clips.shape}")
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ff", "cf", "fp", "fs", "cp")}
    for i in range(0, len(clips), batch_size):
        video = clips_to_tensor(clips[i : i + batch_size]).to(nets.device)  # (B, 3, F, H, W)
        b, f = video.shape[0], video.shape[2]
        feats, logits = nets.frame(video.transpose(1, 2).flatten(0, 1))  # frames (B*F, 3, H, W)
        logp = [logits[n].log_softmax(-1) for n in APPEARANCE_NAMES]
        out["ff"].append(feats.cpu().numpy())
        out["fp"].append(np.stack([lp.view(b, f, -1).mean(1).argmax(-1).cpu().numpy() for lp in logp], 1))
        out["fs"].append(np.stack([lp.argmax(-1).cpu().numpy() for lp in logp], 1))
        feats, logits = nets.clip(video)
        out["cf"].append(feats.cpu().numpy())
        out["cp"].append(np.stack([logits[n].argmax(-1).cpu().numpy() for n in ATTRIBUTE_NAMES], 1))
    cat = {k: np.concatenate(v) for k, v in out.items()}
    return Embedding(cat["ff"], cat["cf"], cat["fp"], cat["fs"], cat["cp"])


def fd_frame(
    clips_a: np.ndarray | Embedding, clips_b: np.ndarray | Embedding, nets: FeatureNets | None = None
) -> float:
    """Frechet distance between frame-encoder features of every frame of two clip sets (an FID analogue)."""
    a, b = (c if isinstance(c, Embedding) else embed(c, nets) for c in (clips_a, clips_b))
    return frechet_distance(a.frame_features, b.frame_features)


def fd_clip(clips_a: np.ndarray | Embedding, clips_b: np.ndarray | Embedding, nets: FeatureNets | None = None) -> float:
    """Frechet distance between clip-encoder features of two clip sets (an FVD analogue)."""
    a, b = (c if isinstance(c, Embedding) else embed(c, nets) for c in (clips_a, clips_b))
    return frechet_distance(a.clip_features, b.clip_features)


def adherence(
    clips: np.ndarray | Embedding, examples: list[Example], nets: FeatureNets | None = None
) -> dict[str, float]:
    """Fraction of clips whose predicted attribute matches the prompt's ground truth.

    Appearance comes from the frame encoder (log-probs averaged over frames), motion from the clip encoder.
    Keys: each attribute, ``appearance_mean`` and ``appearance_all`` (every appearance attribute right).
    """
    emb = clips if isinstance(clips, Embedding) else embed(clips, nets)
    truth = labels_of(examples)  # (N, A)
    if len(truth) != len(emb.clip_predictions):
        raise ValueError(f"got {len(emb.clip_predictions)} clips for {len(truth)} examples; pass one clip per example")
    app = truth[:, [ATTRIBUTE_NAMES.index(n) for n in APPEARANCE_NAMES]]
    hit = emb.frame_predictions == app  # (N, len(APPEARANCE_NAMES))
    result = {n: float(hit[:, i].mean()) for i, n in enumerate(APPEARANCE_NAMES)}
    m = ATTRIBUTE_NAMES.index("motion")
    result["motion"] = float((emb.clip_predictions[:, m] == truth[:, m]).mean())
    result["appearance_mean"] = float(hit.mean())
    result["appearance_all"] = float(hit.all(1).mean())
    return result


def encoder_accuracies(examples: list[Example], nets: FeatureNets) -> dict[str, float]:
    """Accuracy of every head on real clips of ``examples``.

    Keys ``frame/<attr>`` (log-probs averaged over frames), ``frame_single/<attr>`` (per frame), ``clip/<attr>``.
    """
    emb = embed(render_examples(examples, NUM_FRAMES, SIZE), nets)
    truth = labels_of(examples)
    result = {}
    for i, n in enumerate(APPEARANCE_NAMES):
        t = truth[:, ATTRIBUTE_NAMES.index(n)]
        result[f"frame/{n}"] = float((emb.frame_predictions[:, i] == t).mean())
        result[f"frame_single/{n}"] = float((emb.frame_single_predictions[:, i] == np.repeat(t, NUM_FRAMES)).mean())
    for i, n in enumerate(ATTRIBUTE_NAMES):
        result[f"clip/{n}"] = float((emb.clip_predictions[:, i] == truth[:, i]).mean())
    return result


def reference_examples(examples: list[Example]) -> list[Example]:
    """The same prompts and ground truth with different render seeds: the real set generators are compared to."""
    return [dataclasses.replace(ex, seed=int(np.random.default_rng([ex.seed, 1]).integers(2**31))) for ex in examples]


def real_generator(examples: list[Example]) -> GenerateFn:
    """A generate_fn that renders the true clip for each known prompt (seed = render seed): the ideal generator."""
    portraits = {ex.prompt: ex.portrait for ex in examples}

    def generate(prompts: list[str], seeds: list[int]) -> np.ndarray:
        missing = [p for p in prompts if p not in portraits]
        if missing:
            raise KeyError(f"real_generator knows only the prompts of its examples; unknown: {missing[:2]}")
        return render_examples([Example(p, s, portraits[p]) for p, s in zip(prompts, seeds)], NUM_FRAMES, SIZE)

    return generate


def generate_clips(generate_fn: GenerateFn, examples: list[Example], batch_size: int = 32) -> np.ndarray:
    """Call ``generate_fn`` on the examples' prompts and seeds in batches and check what comes back."""
    chunks = []
    for i in range(0, len(examples), batch_size):
        part = examples[i : i + batch_size]
        clips = generate_fn([ex.prompt for ex in part], [ex.seed for ex in part])
        want = (len(part), NUM_FRAMES, SIZE, SIZE, 3)
        if not isinstance(clips, np.ndarray) or clips.dtype != np.uint8 or clips.shape != want:
            got = f"{type(clips).__name__} {getattr(clips, 'dtype', '')} {getattr(clips, 'shape', '')}"
            raise ValueError(
                f"generate_fn must return a uint8 array of shape {want} for {len(part)} prompts; got {got} "
                "(convert with w2svd.data.tensor_to_video per clip, or resize to 64x64, 9 frames)"
            )
        chunks.append(clips)
    return np.concatenate(chunks)


def subset_fds(
    generated: Embedding, reference: Embedding, size: int, blocks: int | None = None
) -> list[dict[str, float]]:
    """FD-clip and FD-frame of each disjoint block of ``size`` clips (in order; the first ``blocks`` of them, or all)
    against the same block of references.

    The first block of ``heldout_examples(n)`` is ``heldout_examples(size)``: its figures are what an ``n=size``
    evaluation of the same clips gives.
    """
    n = len(generated.clip_features)
    if size < 2 or n < size or len(reference.clip_features) != n:
        raise ValueError(
            f"need two embeddings of the same n >= size >= 2; got n={n} and {len(reference.clip_features)}, size={size}"
        )
    frames = len(generated.frame_features) // n
    out = []
    starts = range(0, n - size + 1, size)
    for start in starts[:blocks]:
        clips, frame_rows = slice(start, start + size), slice(start * frames, (start + size) * frames)
        out.append(
            {
                "first": start,
                "fd_clip": frechet_distance(generated.clip_features[clips], reference.clip_features[clips]),
                "fd_frame": frechet_distance(
                    generated.frame_features[frame_rows], reference.frame_features[frame_rows]
                ),
            }
        )
    return out


def evaluate_generator(
    generate_fn: GenerateFn, n: int = 256, batch_size: int = 32, nets: FeatureNets | None = None, first: int = 0
) -> dict[str, float]:
    """FD-frame, FD-clip and adherence of ``generate_fn`` on ``heldout_examples(n)``, with the real-vs-real floor.

    Generated clips and the examples' own real clips are both compared to a reference set of real clips
    rendered with other seeds; ``fd_*_real`` is therefore what a perfect generator would score. Motion and flicker
    (``temporal/*``, w2svd.eval.temporal) come with their ratios to the reference clips. ``first`` (< n) adds
    ``fd_clip@first`` and ``fd_frame@first``: the FDs of the first ``first`` pairs alone, which an evaluation with
    ``n=first`` would give for the same clips.
    """
    if first and not 2 <= first < n:
        raise ValueError(f"first={first} must be 0 (off) or in [2, n={n})")
    if n < 2:
        raise ValueError(f"n={n} is too small for a Frechet distance; use n >= 64 (256 for reported numbers)")
    nets = nets or load_feature_nets()
    examples = heldout_examples(n)
    from w2svd.eval.temporal import summarise

    reference_clips = render_examples(reference_examples(examples), NUM_FRAMES, SIZE)
    reference = embed(reference_clips, nets, batch_size)
    real = embed(render_examples(examples, NUM_FRAMES, SIZE), nets, batch_size)
    clips = generate_clips(generate_fn, examples, batch_size)
    generated = embed(clips, nets, batch_size)
    result = {
        "n": float(n),
        "fd_frame": fd_frame(generated, reference),
        "fd_clip": fd_clip(generated, reference),
        "fd_frame_real": fd_frame(real, reference),
        "fd_clip_real": fd_clip(real, reference),
    }
    if first:
        (head,) = subset_fds(generated, reference, first, blocks=1)
        result[f"fd_frame@{first}"], result[f"fd_clip@{first}"] = head["fd_frame"], head["fd_clip"]
    result.update({f"adherence/{k}": v for k, v in adherence(generated, examples).items()})
    temporal, real_temporal = summarise(clips), summarise(reference_clips)
    result.update({f"temporal/{k}": v for k, v in temporal.items()})
    result["motion_vs_real"] = temporal["motion"] / real_temporal["motion"]
    result["flicker_vs_real"] = temporal["flicker"] / real_temporal["flicker"]
    return result


def blur(clips: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of every frame (sigma in pixels); a degradation for sanity checks."""
    out = scipy.ndimage.gaussian_filter(clips.astype(np.float32), sigma=(0, 0, sigma, sigma, 0))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def add_noise(clips: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Add i.i.d. Gaussian pixel noise (std in 0-255 units)."""
    noise = np.random.default_rng(seed).normal(0.0, std, clips.shape)
    return np.clip(clips + noise + 0.5, 0, 255).astype(np.uint8)


def freeze(clips: np.ndarray) -> np.ndarray:
    """Every frame replaced by the first: right appearance, no motion."""
    return np.repeat(clips[:, :1], clips.shape[1], axis=1)


def jitter(clips: np.ndarray, pixels: int = 1, seed: int = 0) -> np.ndarray:
    """Every frame shifted by its own random whole-pixel offset in [-pixels, pixels]^2: a wobbling head."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(clips)
    for i in range(clips.shape[0]):
        for t in range(clips.shape[1]):
            dy, dx = rng.integers(-pixels, pixels + 1, size=2)
            out[i, t] = np.roll(clips[i, t], (int(dy), int(dx)), axis=(0, 1))
    return out


LADDER = (
    ("blur", 0.5), ("blur", 1.0), ("blur", 2.0), ("noise", 16.0), ("noise", 32.0), ("noise", 64.0),
    ("jitter", 1.0), ("jitter", 2.0), ("freeze", 0),
)  # fmt: skip


def degrade(clips: np.ndarray, name: str, strength: float) -> np.ndarray:
    """One step of the sanity ladder: ``real`` (unchanged), ``blur``, ``noise``, ``jitter`` (pixels) or ``freeze``."""
    apply = {
        "real": lambda c: c,
        "blur": lambda c: blur(c, strength),
        "noise": lambda c: add_noise(c, strength),
        "jitter": lambda c: jitter(c, int(strength)),
        "freeze": freeze,
    }
    if name not in apply:
        raise ValueError(f"unknown degradation {name!r}; known: {sorted(apply)}")
    return apply[name](clips)


def degradation_ladder(
    n: int = 128, nets: FeatureNets | None = None, steps: tuple = LADDER
) -> list[tuple[str, float, float, float]]:
    """(name, strength, fd_frame, fd_clip) of degraded real clips vs the reference set; row 0 is the real floor."""
    nets = nets or load_feature_nets()
    examples = heldout_examples(n)
    reference = embed(render_examples(reference_examples(examples), NUM_FRAMES, SIZE), nets)
    real = render_examples(examples, NUM_FRAMES, SIZE)
    rows = []
    for name, strength in (("real", 0.0), *steps):
        emb = embed(degrade(real, name, strength), nets)
        rows.append((name, float(strength), fd_frame(emb, reference), fd_clip(emb, reference)))
    return rows


def format_report(result: dict[str, float]) -> str:
    """A two-column text table of ``evaluate_generator``'s result."""
    width = max(len(k) for k in result)
    lines = []
    for key, value in result.items():
        text = f"{int(value)}" if key == "n" else f"{value:.2%}" if key.startswith("adherence/") else f"{value:.3f}"
        lines.append(f"{key:<{width}}  {text:>9}")
    return "\n".join(lines)
