"""Real-video preparation: buckets, skipped files, resume, data-parallel shards, the latent_cache layout."""

import importlib.util
import json

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from w2svd.data import render_clip, sample_portrait, video_to_tensor
from w2svd.data.latent_cache import cache_batch
from w2svd.data.prepare import PrepareError, load_prepared, prepare
from w2svd.data.videos import nearest_bucket, parse_buckets, read_clip

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
BUCKETS = [(32, 32), (32, 48)]
CAPTIONS = {
    "a.mp4": "a woman with red hair talking",
    "b.mp4": "a man with glasses smiling",
    "e.mp4": "x",
    "sub/f.mp4": "y",
}


def write_mp4(path, frames: np.ndarray, fps: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def portrait_frames(seed: int, num_frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_clip(sample_portrait(rng, "train"), seed, num_frames, 48)  # (F, 48, 48, 3)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_mp4(root / "a.mp4", portrait_frames(0, 12))  # square, caption in the JSONL
    write_mp4(root / "b.mp4", portrait_frames(1, 12)[:, 8:40])  # 32x48: the wide bucket
    write_mp4(root / "c.mp4", portrait_frames(2, 12))  # caption from a .txt sidecar
    (root / "c.txt").write_text("a woman with blond hair nodding\n")
    write_mp4(root / "d.mp4", portrait_frames(3, 12))  # no caption anywhere
    (root / "e.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)  # corrupt
    write_mp4(root / "sub" / "f.mp4", portrait_frames(4, 3))  # too short for 5 frames at 8 fps
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps({"file": f, "caption": c}) + "\n" for f, c in CAPTIONS.items()))
    return root, captions


def run(videos, out, base, **kw):
    root, captions = videos
    args = dict(captions=captions, num_frames=5, fps=8, buckets=BUCKETS, shard_size=2, progress=False, rank=0, world=1)
    return prepare(root, out, str(base), **{**args, **kw})


@pytest.fixture(scope="module")
def prepared(videos, tiny_pipeline_dir, tmp_path_factory):
    """One run through the CLI entry point: a plain process, no accelerate launch."""
    spec = importlib.util.spec_from_file_location("prepare_entry", ROOT / "training" / "prepare.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    root, captions = videos
    out = tmp_path_factory.mktemp("prepared")
    argv = [
        "--videos",
        str(root),
        "--captions",
        str(captions),
        "--base",
        str(tiny_pipeline_dir),
        "--out",
        str(out),
        "--num-frames",
        "5",
        "--fps",
        "8",
        "--buckets",
        "32x32,32x48",
        "--shard-size",
        "2",
        "--no-progress",
    ]
    assert entry.main(argv) == 0
    return out


def test_buckets_and_frame_sampling(videos):
    assert parse_buckets("544x960, 960x544") == [(544, 960), (960, 544)]
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_buckets("544by960")
    assert nearest_bucket(1080, 1920, [(544, 960), (960, 544), (624, 624)]) == (544, 960)
    clip = read_clip(videos[0] / "b.mp4", 5, 8, (32, 32))  # 16 fps source: frames 0, 2, 4, 6, 8; centre crop
    assert clip.shape == (5, 32, 32, 3) and clip.dtype == np.uint8


def test_index_shards_and_skip_report(prepared):
    index = json.loads((prepared / "index.json").read_text())
    assert index["buckets"] == {"32x32": 2, "32x48": 1} and index["num_clips"] == 3
    assert [s["file"] for s in index["shards"]] == [
        "shard-32x32-00000.safetensors",
        "shard-32x32-00001.safetensors",
        "shard-32x48-00000.safetensors",
    ]
    skipped = {r["file"]: r["reason"] for r in map(json.loads, (prepared / "skipped.jsonl").read_text().splitlines())}
    assert set(skipped) == {"d.mp4", "e.mp4", "sub/f.mp4"}
    assert "no caption" in skipped["d.mp4"] and "unreadable" in skipped["e.mp4"]
    assert "too short" in skipped["sub/f.mp4"]


def test_load_prepared_matches_direct_encoding(prepared, videos, tiny_pipeline_dir):
    from w2svd.data.prepare import load_encoders

    with pytest.raises(ValueError, match=r"\['32x32', '32x48'\]"):
        load_prepared(prepared)
    cache = load_prepared(prepared, "32x32")
    assert cache["latents"].shape == (2, 4, 2, 8, 8) and cache["latents"].dtype == torch.float16
    assert cache["embeds"].shape[:2] == cache["mask"].shape and cache["pooled"].shape == (2, 8)
    assert {"empty_embeds", "empty_mask", "empty_pooled"} <= set(cache)
    _, backbone = load_encoders(str(tiny_pipeline_dir), torch.device("cpu"), None)
    video = video_to_tensor(read_clip(videos[0] / "c.mp4", 5, 8, (32, 32)))[None]
    torch.testing.assert_close(cache["latents"][1].float(), backbone.encode_video(video)[0].half().float())
    cond = backbone.encode_prompts(["a woman with blond hair nodding"])
    n = cond.embeds.shape[1]
    torch.testing.assert_close(cache["embeds"][1, :n].float(), cond.embeds[0].half().float())
    x0, batch_cond = cache_batch(cache, np.array([1, 0]), np.array([False, True]), torch.device("cpu"))
    assert x0.shape == (2, 4, 2, 8, 8) and batch_cond.pooled.shape == (2, 8)
    assert load_prepared(prepared, "32x48")["latents"].shape == (1, 4, 2, 8, 12)


def test_resume_skips_finished_shards(prepared, videos, tiny_pipeline_dir, monkeypatch):
    shards = sorted(prepared.glob("shard-*.safetensors"))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    index = (prepared / "index.json").read_text()
    import w2svd.data.prepare

    monkeypatch.setattr(w2svd.data.prepare, "load_encoders", lambda *a, **k: pytest.fail("nothing to encode on resume"))
    run(videos, prepared, tiny_pipeline_dir)
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes
    monkeypatch.undo()
    shards[0].unlink()
    run(videos, prepared, tiny_pipeline_dir)
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in shards[1:]) and shards[0].is_file()

    def without_digests(text: str) -> dict:
        data = json.loads(text)
        for e in data["shards"]:
            e.pop("sha256")
        return data

    assert without_digests((prepared / "index.json").read_text()) == without_digests(index)  # the digests follow
    from w2svd.training.checkpoint import sha256_file

    entries = {e["file"]: e["sha256"] for e in json.loads((prepared / "index.json").read_text())["shards"]}
    assert entries[shards[0].name] == sha256_file(shards[0])  # the re-encoded shard's own digest
    assert not list(prepared.glob(".tmp-*"))
    with pytest.raises(PrepareError, match="num_frames.*new --out"):
        run(videos, prepared, tiny_pipeline_dir, num_frames=9)


def test_data_parallel_ranks_split_shards(prepared, videos, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "dp"
    with pytest.raises(PrepareError, match="missing or incomplete"):
        run(videos, out, tiny_pipeline_dir, rank=0, world=2)  # rank 1 has not written its shard yet
    assert not (out / "index.json").exists()
    run(videos, out, tiny_pipeline_dir, rank=1, world=2)
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-32x32-00000.safetensors",
        "shard-32x32-00001.safetensors",
        "shard-32x48-00000.safetensors",
    ]
    run(videos, out, tiny_pipeline_dir, rank=0, world=2)
    for bucket in ("32x32", "32x48"):
        a, b = load_prepared(out, bucket), load_prepared(prepared, bucket)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_corrupt_shard_is_refused_with_the_fix(prepared, tmp_path):
    import shutil

    from w2svd.data.prepare import INDEX, PrepareError, load_prepared

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    entry = next(e for e in json.loads((copy / INDEX).read_text())["shards"] if e["clips"])
    assert len(entry["sha256"]) == 64
    with open(copy / entry["file"], "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\xff" * 8)  # flipped bytes in the tensor data: safetensors would load them
    with pytest.raises(PrepareError, match=r"is corrupt \(sha256 differs from index.json\); delete it and re-run"):
        load_prepared(copy, entry["bucket"])
