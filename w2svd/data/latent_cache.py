"""Cached VAE latents and text conditioning of portrait clips, shared by teacher and distillation runs."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from w2svd.backbones import Backbone, Cond
from w2svd.config import ConfigError
from w2svd.data import PortraitDataset
from w2svd.training.checkpoint import sha256_file

log = logging.getLogger(__name__)


DECODER_SIDE = ("decoder.", "post_quant_conv.")  # VAE weights that latents do not depend on


def _digest(h, module: torch.nn.Module, keep=lambda name: True, limit: int | None = None) -> None:
    items = [(n, t) for n, t in sorted(module.state_dict().items()) if keep(n)][:limit]
    for name, t in items:
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes()[:4096])


def _fingerprint(backbone: Backbone, extra: object) -> str:
    """Changes whenever what the cache holds could: the VAE's encoder side and config, the text encoders (their
    first tensors: a 13B text encoder is not hashed whole) or the data settings. A decoder-only VAE fine-tune
    keeps the latents, and so the cache."""
    vae = backbone.vae
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}  # not where it was loaded from
    h = hashlib.sha256(json.dumps([extra, config], sort_keys=True, default=str).encode())
    _digest(h, vae, keep=lambda name: not name.startswith(DECODER_SIDE))
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(backbone.pipe, name, None) is not None:
            _digest(h, getattr(backbone.pipe, name), limit=6)
    return h.hexdigest()[:16]


@torch.no_grad()
def load_or_build(
    backbone: Backbone, data: PortraitDataset, num_clips: int, cache_dir: str | Path, chunk: int = 32
) -> dict[str, torch.Tensor]:
    """Latents (fp16), right-padded text embeddings, masks, pooled vectors, and the empty prompt's.

    A family whose conditioning has no mask or pooled vector (Wan: fixed-length zero-padded embeddings)
    stores neither, and its embeddings are never cut to the batch's longest prompt.
    """
    extra = [num_clips, data.split, data.seed, data.num_frames, data.size]
    path = Path(cache_dir) / f"latents-{_fingerprint(backbone, extra)}.safetensors"
    if path.is_file():
        problem = check_digest(path)
        if problem is None:
            log.info("using latent cache %s", path)
            return load_file(path)
        log.warning("latent cache %s %s: moved aside to %s and rebuilt", path, problem, path.with_suffix(".corrupt"))
        path.replace(path.with_suffix(".corrupt"))
    latents, conds = [], []
    for i in tqdm(range(0, num_clips, chunk), desc="caching latents", dynamic_ncols=True):
        items = [data[j] for j in range(i, min(i + chunk, num_clips))]
        latents.append(backbone.encode_video(torch.stack([it["video"] for it in items])).half().cpu())
        conds.append(backbone.encode_prompts([it["prompt"] for it in items]).to("cpu"))
    cond = Cond.cat(conds)
    empty = backbone.encode_prompts([""]).to("cpu")
    cache = {"latents": torch.cat(latents), "embeds": cond.embeds.half(), "empty_embeds": empty.embeds.half()}
    if cond.mask is not None:
        cache.update(mask=cond.mask.to(torch.uint8), empty_mask=empty.mask.to(torch.uint8))
    if cond.pooled is not None:
        cache.update(pooled=cond.pooled.half(), empty_pooled=empty.pooled.half())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(cache, tmp)
    _digest_path(path).write_text(sha256_file(tmp) + "\n")  # before the rename: a cache never lacks its digest
    tmp.replace(path)
    log.info("wrote latent cache %s (%d clips)", path, num_clips)
    return cache


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def check_digest(path: Path) -> str | None:
    """None if ``path`` matches its ``.sha256`` file, else what is wrong; a cache from before digests gets one."""
    digest, actual = _digest_path(path), sha256_file(path)
    if not digest.is_file():
        log.warning("latent cache %s has no checksum (written by an older w2svd); recording one now", path)
        digest.write_text(actual + "\n")
        return None
    if digest.read_text().strip() != actual:
        return "is corrupt (sha256 differs from its .sha256 file)"
    return None


def from_prepared(folder: str | Path, height: int, width: int, num_frames: int) -> dict[str, torch.Tensor]:
    """Bucket ``<height>x<width>`` of a ``training/prepare.py`` folder, in the layout ``load_or_build`` returns."""
    from w2svd.data.prepare import INDEX, load_prepared

    folder, bucket = Path(folder), f"{height}x{width}"
    if not (folder / INDEX).is_file():
        raise ConfigError(
            f"method.prepared={str(folder)!r} has no {INDEX}: run training/prepare.py --out {folder} to the end "
            "(the index is written last), or leave method.prepared empty for the synthetic portrait clips"
        )
    settings = json.loads((folder / INDEX).read_text())["settings"]
    if settings["num_frames"] != num_frames:
        raise ConfigError(
            f"data.num_frames={num_frames} but {folder} was prepared with --num-frames {settings['num_frames']}; "
            "set data.num_frames to match or prepare the videos again"
        )
    try:
        cache = load_prepared(folder, bucket)
    except ValueError as e:  # the bucket has no clips; the message lists the available ones
        raise ConfigError(f"data.height x data.width = {bucket}: {e}; set data.height/data.width to one") from e
    log.info("using %d prepared clips of bucket %s from %s", len(cache["latents"]), bucket, folder)
    return cache


def check_shape(cache: dict[str, torch.Tensor], want: tuple[int, ...], folder: str | Path) -> None:
    """Prepared latents must have the shape (C, F', H', W') the base gives the run's clips."""
    got = tuple(cache["latents"].shape[1:])
    if got != tuple(want):
        raise ConfigError(
            f"latents in {folder} are {got} (C, F', H', W') but the base gives {tuple(want)} for data.num_frames x "
            "data.height x data.width; prepare with the same base (training/prepare.py --base) and settings"
        )


def cache_batch(
    cache: dict[str, torch.Tensor],
    idx: np.ndarray,
    drop: np.ndarray | None,
    device: torch.device,
    rows: slice = slice(None),
) -> tuple[torch.Tensor, Cond]:
    """Latents and conditioning for rows ``idx``; rows where ``drop`` is True get the empty prompt.

    ``rows`` keeps one process's part of the batch, its text padded to the length of the whole batch's.
    """
    masked, has_pooled = "mask" in cache, "pooled" in cache
    length = cache["embeds"].shape[1]
    if masked:  # cut the right padding beyond the longest prompt of the whole batch
        lengths = cache["mask"][torch.from_numpy(idx)].long().sum(1)
        if drop is not None and drop.any():
            lengths[torch.from_numpy(drop)] = int(cache["empty_mask"][0].long().sum())
        length = max(int(lengths.max()), 1)
    idx_t = torch.from_numpy(idx[rows])
    drop = None if drop is None else drop[rows]
    embeds = cache["embeds"][idx_t].float()
    mask = cache["mask"][idx_t].long() if masked else None
    pooled = cache["pooled"][idx_t].float() if has_pooled else None
    if drop is not None and drop.any():
        d = torch.from_numpy(drop)
        n = cache["empty_embeds"].shape[1]
        embeds[d] = 0.0
        embeds[d, :n] = cache["empty_embeds"][0].float()
        if masked:
            mask[d] = 0
            mask[d, :n] = cache["empty_mask"][0].long()
        if has_pooled:
            pooled[d] = cache["empty_pooled"][0].float()
    cond = Cond(embeds[:, :length], None if mask is None else mask[:, :length], pooled).to(device)
    return cache["latents"][idx_t].float().to(device), cond
