"""Real-video data preparation: VAE latents and text conditioning in sharded safetensors, plus ``index.json``.

Each resolution bucket's clips are split into shards of ``shard_size``; each shard is written atomically
(temp name, then rename) with its file list in the header, so a re-run skips finished shards. Processes
launched with accelerate take every k-th shard; rank 0 writes ``skipped.jsonl`` and ``index.json`` last, after
all ranks finish. ``load_prepared`` returns the dict layout of ``w2svd.data.latent_cache``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from w2svd.data.videos import VideoError, caption_for, find_videos, nearest_bucket, probe, read_captions, read_clip
from w2svd.training.checkpoint import sha256_file

log = logging.getLogger(__name__)

INDEX, SETTINGS, SKIPPED, EMPTY = "index.json", "prepare.json", "skipped.jsonl", "empty.safetensors"
VERSION = 1


class PrepareError(RuntimeError):
    """An output folder or setting that cannot be used; the message names the fix."""


@dataclasses.dataclass
class Shard:
    name: str  # "<H>x<W>-<i>"
    bucket: tuple[int, int]  # (height, width)
    files: list[str]
    captions: list[str]

    @property
    def filename(self) -> str:
        return f"shard-{self.name}.safetensors"


def bucket_name(bucket: tuple[int, int]) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def plan(
    videos: Path, captions: Path | None, buckets: list[tuple[int, int]], shard_size: int
) -> tuple[list[Shard], list[dict]]:
    """Shards (files grouped by nearest bucket, sorted) and the videos skipped before decoding, with reasons."""
    table = read_captions(captions) if captions else {}
    by_bucket: dict[tuple[int, int], list[tuple[str, str]]] = {b: [] for b in buckets}
    skipped = []
    for rel in find_videos(videos):
        try:
            height, width, _ = probe(videos / rel)
        except VideoError as e:
            skipped.append({"file": rel, "reason": str(e)})
            continue
        text = caption_for(videos, rel, table)
        if text is None:
            skipped.append({"file": rel, "reason": "no caption (not in the caption file and no .txt sidecar)"})
            continue
        by_bucket[nearest_bucket(height, width, buckets)].append((rel, text))
    shards = []
    for bucket, items in by_bucket.items():
        for i in range(0, len(items), shard_size):
            chunk = items[i : i + shard_size]
            name = f"{bucket_name(bucket)}-{i // shard_size:05d}"
            shards.append(Shard(name, bucket, [f for f, _ in chunk], [c for _, c in chunk]))
    return shards, skipped


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    tmp.replace(path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text)
    tmp.replace(path)


def shard_header(path: Path) -> dict | None:
    """The metadata of a finished shard, or None if it is missing or unreadable."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        return {k: json.loads(v) for k, v in meta.items()}
    except Exception:  # missing, truncated or corrupt: the shard is rebuilt
        return None


def _is_done(out: Path, shard: Shard) -> bool:
    header = shard_header(out / shard.filename)
    return header is not None and header.get("files") == shard.files


def check_settings(out: Path, settings: dict, write: bool) -> None:
    """Refuse to mix shards prepared with other settings in one folder; record them on the first run."""
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise PrepareError(
                f"{out} was prepared with other settings ({', '.join(f'{k}: {old.get(k)!r}' for k in diff)}); "
                "use a new --out folder or delete it"
            )
    elif write:
        _write_text_atomic(path, json.dumps(settings, indent=1))


def load_encoders(base: str, device: torch.device, dtype: torch.dtype | None, vae_tiling: bool = True):
    """The base pipeline without its transformer (VAE and text encoders only), and its backbone adapter."""
    from diffusers import DiffusionPipeline

    from w2svd.backbones import backbone_for
    from w2svd.hub import resolve

    folder = resolve(base, "base")
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe = DiffusionPipeline.from_pretrained(folder, transformer=None, dtype=dtype)
    pipe.to(device)
    if vae_tiling and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()
    return pipe, backbone_for(pipe)


def encode_shard(backbone, videos: Path, shard: Shard, num_frames: int, fps: float, batch_size: int, bar):
    """Tensors and header of one shard; clips that fail to decode are left out and listed in the header."""
    from w2svd.backbones import Cond
    from w2svd.data import video_to_tensor

    good, skipped, latents, conds = [], [], [], []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        video = torch.stack([v for _, v in pending])  # (B, 3, F, H, W)
        latents.append(backbone.encode_video(video).half().cpu())
        conds.append(backbone.encode_prompts([shard.captions[i] for i, _ in pending]).to("cpu"))
        pending.clear()

    for i, rel in enumerate(shard.files):
        try:
            pending.append((i, video_to_tensor(read_clip(videos / rel, num_frames, fps, shard.bucket))))
            good.append(i)
        except VideoError as e:
            skipped.append({"file": rel, "reason": str(e)})
        if len(pending) == batch_size:
            flush()
        bar.update(1)
    flush()
    header = {
        "files": shard.files,
        "clips": [shard.files[i] for i in good],
        "captions": [shard.captions[i] for i in good],
        "bucket": list(shard.bucket),
        "skipped": skipped,
    }
    if not good:
        return {"empty_shard": torch.zeros(1)}, header
    cond = Cond.cat(conds)
    tensors = {
        "latents": torch.cat(latents),  # (N, C, F', H', W')
        "embeds": cond.embeds.half(),  # (N, L, D)
        "mask": cond.mask.to(torch.uint8),  # (N, L)
        "pooled": cond.pooled.half(),  # (N, P)
    }
    return tensors, header


def prepare(
    videos: str | Path,
    out: str | Path,
    base: str,
    captions: str | Path | None = None,
    num_frames: int = 9,
    fps: float = 8.0,
    buckets: list[tuple[int, int]] | None = None,
    shard_size: int = 64,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    vae_tiling: bool = True,
    progress: bool = True,
    rank: int | None = None,
    world: int | None = None,
) -> Path:
    """Encode a folder of captioned videos into shards under ``out``; return the path of ``index.json``.

    ``rank``/``world`` override the accelerate process layout (None: from ``accelerate.PartialState``; a plain
    ``python`` run is rank 0 of 1).
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    videos, out = Path(videos), Path(out)
    buckets = buckets or [(64, 64)]
    if num_frames < 1 or shard_size < 1 or batch_size < 1 or fps <= 0:
        raise PrepareError(
            f"num_frames={num_frames}, shard_size={shard_size}, batch_size={batch_size} must be >= 1 and fps={fps} > 0"
        )
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()  # gloo across CPU processes
    state = PartialState(cpu=cpu) if rank is None or world is None else None
    rank = state.process_index if state else rank
    world = state.num_processes if state else world
    device = state.device if state else torch.device("cpu")
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "version": VERSION,
        "base": str(base),
        "num_frames": num_frames,
        "fps": float(fps),
        "buckets": [bucket_name(b) for b in buckets],
        "shard_size": shard_size,
    }
    check_settings(out, settings, write=rank == 0)
    shards, skipped = plan(videos, Path(captions) if captions else None, buckets, shard_size)
    mine = [s for i, s in enumerate(shards) if i % world == rank]
    todo = [s for s in mine if not _is_done(out, s)]
    need_empty = rank == 0 and shard_header(out / EMPTY) is None
    log.info("rank %d/%d: %d of its %d shards to encode", rank, world, len(todo), len(mine))
    if todo or need_empty:
        pipe, backbone = load_encoders(base, device, dtype, vae_tiling)
        check_grid(pipe, num_frames, buckets)
        if need_empty:
            empty = backbone.encode_prompts([""]).to("cpu")
            tensors = {
                "empty_embeds": empty.embeds.half(),
                "empty_mask": empty.mask.to(torch.uint8),
                "empty_pooled": empty.pooled.half(),
            }
            _save_atomic(tensors, out / EMPTY, {"base": json.dumps(str(base))})
        total = sum(len(s.files) for s in todo)
        with tqdm(total=total, desc=f"prepare [{rank}/{world}]", disable=not progress, dynamic_ncols=True) as bar:
            for shard in todo:
                tensors, header = encode_shard(backbone, videos, shard, num_frames, fps, batch_size, bar)
                _save_atomic(tensors, out / shard.filename, {k: json.dumps(v) for k, v in header.items()})
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        return write_index(out, shards, skipped, settings)
    return out / INDEX


def check_grid(pipe, num_frames: int, buckets: list[tuple[int, int]]) -> None:
    """Frames must be tk+1 and bucket sides multiples of the VAE's spatial factor x the transformer patch."""
    t, s = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    config = Path(pipe.name_or_path or ".") / "transformer" / "config.json"  # the transformer itself is not loaded
    patch = json.loads(config.read_text()).get("patch_size", 2) if config.is_file() else 2
    if (num_frames - 1) % t:
        raise PrepareError(f"--num-frames {num_frames} must be {t}k+1 for this VAE (e.g. {4 * t + 1})")
    bad = [bucket_name(b) for b in buckets if b[0] % (s * patch) or b[1] % (s * patch)]
    if bad:
        raise PrepareError(f"buckets {bad} must have sides that are multiples of {s * patch} (VAE x patch)")


def write_index(out: Path, shards: list[Shard], skipped: list[dict], settings: dict) -> Path:
    """After every shard exists: ``skipped.jsonl`` and then ``index.json`` (the marker of a finished run)."""
    entries, missing, skipped = [], [], list(skipped)
    for shard in shards:
        header = shard_header(out / shard.filename)
        if header is None or header.get("files") != shard.files:
            missing.append(shard.filename)
            continue
        skipped += header["skipped"]
        entries.append(
            {
                "file": shard.filename,
                "bucket": bucket_name(shard.bucket),
                "clips": len(header["clips"]),
                "sha256": sha256_file(out / shard.filename),
            }
        )
    if missing or shard_header(out / EMPTY) is None:
        raise PrepareError(
            f"{len(missing)} shard(s) missing or incomplete in {out} (e.g. {(missing or [EMPTY])[:3]}); "
            "another process failed or has not finished; re-run the same command to finish them"
        )
    buckets: dict[str, int] = {}
    for e in entries:
        buckets[e["bucket"]] = buckets.get(e["bucket"], 0) + e["clips"]
    _write_text_atomic(out / SKIPPED, "".join(json.dumps(s) + "\n" for s in skipped))
    index = {
        "settings": settings,
        "num_clips": sum(buckets.values()),
        "buckets": buckets,
        "shards": entries,
        "empty": EMPTY,
        "skipped": len(skipped),
    }
    _write_text_atomic(out / INDEX, json.dumps(index, indent=1))
    log.info(
        "prepared %d clips in %d shards (%d skipped, see %s)",
        index["num_clips"],
        len(entries),
        len(skipped),
        out / SKIPPED,
    )
    return out / INDEX


def load_prepared(cache_dir: str | Path, bucket: str | None = None) -> dict[str, torch.Tensor]:
    """One bucket of a prepared folder in ``latent_cache``'s layout: latents, embeds, mask, pooled, empty_*.

    ``bucket`` ('HxW') may be omitted when the folder holds a single bucket with clips.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"no {INDEX} in {cache_dir}: run training/prepare.py --out {cache_dir} (the index is written last, "
            "so a missing one means preparation did not finish)"
        )
    index = json.loads(path.read_text())
    present = sorted(b for b, n in index["buckets"].items() if n)
    if bucket is None:
        if len(present) != 1:
            raise ValueError(f"{cache_dir} holds buckets {present}; pass bucket= one of them")
        bucket = present[0]
    if bucket not in present:
        raise ValueError(f"bucket {bucket!r} has no clips in {cache_dir}; available: {present}")
    entries = [e for e in index["shards"] if e["bucket"] == bucket and e["clips"]]
    for e in entries:  # folders from before shard digests have none to check
        if "sha256" in e and sha256_file(cache_dir / e["file"]) != e["sha256"]:
            raise PrepareError(
                f"shard {cache_dir / e['file']} is corrupt (sha256 differs from {INDEX}); delete it and re-run "
                f"training/prepare.py --out {cache_dir} with the same arguments to encode it again"
            )
    parts = [load_file(cache_dir / e["file"]) for e in entries]
    length = max(p["embeds"].shape[1] for p in parts)

    def pad(t: torch.Tensor) -> torch.Tensor:  # right-pad the text axis to the longest shard
        n = length - t.shape[1]
        return torch.nn.functional.pad(t, (0, 0, 0, n) if t.dim() == 3 else (0, n))

    cache = {
        "latents": torch.cat([p["latents"] for p in parts]),
        "embeds": torch.cat([pad(p["embeds"]) for p in parts]),
        "mask": torch.cat([pad(p["mask"]) for p in parts]),
        "pooled": torch.cat([p["pooled"] for p in parts]),
    }
    cache.update(load_file(cache_dir / index["empty"]))
    return cache
