"""Resolving model names to local folders: 'embedded', a local path, or a Hugging Face Hub repo id."""

from __future__ import annotations

import os
import re
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED = {"base": ASSETS / "embedded" / "base", "lora": ASSETS / "embedded" / "w2svd-4step"}
EMBEDDED_LORAS = {"embedded": EMBEDDED["lora"], "embedded-1step": ASSETS / "embedded" / "w2svd-1step"}  # --lora names
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither 'embedded', an existing folder, nor a reachable Hub repo."""


def resolve(name_or_path: str | os.PathLike, kind: str = "base") -> Path:
    """A local folder (or file) for ``name_or_path``; Hub repos are fetched with huggingface_hub.

    Honours HF_HUB_OFFLINE / HF_HOME / HF_HUB_CACHE, so an offline machine uses its local cache.
    """
    name = str(name_or_path).strip()
    if not name:
        raise ModelNotFoundError(f"empty {kind} model name; use 'embedded', a local folder, or a Hub repo id")
    if name == "embedded" or (kind == "lora" and name in EMBEDDED_LORAS):
        path = EMBEDDED[kind] if kind == "base" else EMBEDDED_LORAS[name]
        if not path.exists():
            raise ModelNotFoundError(f"the embedded {kind} model is missing at {path}; re-clone the repository")
        return path
    path = Path(name).expanduser()
    if path.exists():
        return path
    if not REPO_ID.match(name) or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{kind} {name!r} is not an existing path nor a Hub repo id of the form ORG/NAME")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id=name))
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(f"Hub repo {name!r} does not exist or is private (log in with `hf auth login`)") from e
    except LocalEntryNotFoundError as e:
        raise ModelNotFoundError(
            f"Hub repo {name!r} is not in the local cache and the Hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); download it on a connected machine "
            "or pass a local folder"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise ModelNotFoundError(
            f"could not fetch Hub repo {name!r}: {e}; check the network or pass a local folder"
        ) from e


def _run_defaults(run_dir: Path) -> dict:
    """Training resolution of a run (its ``config.yaml``) as the card's generation size."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config.yaml in {run_dir}; pass the run folder written by training/run.py")
    data = (yaml.safe_load(path.read_text()) or {}).get("data", {})
    size = int(data.get("size", 64))
    return {"height": size, "width": size, "num_frames": int(data.get("num_frames", 9))}


def stage(
    run_dir: str | os.PathLike, repo_id: str, base_repo: str | None = None, comfy: bool = False, out: Path | None = None
) -> Path:
    """Build the folder ``push`` uploads: the LoRA, its metadata JSON, README.md, validation samples[, ComfyUI copy].

    ``base_repo`` (the Hub id of the base, for the card) defaults to the run's ``base_model`` when that is a repo id.
    """
    import shutil
    import tempfile

    from w2svd.cards import lora_card
    from w2svd.generator_meta import GeneratorMeta
    from w2svd.lora import WEIGHT_NAME

    run_dir = Path(run_dir)
    weights = run_dir / WEIGHT_NAME
    if not weights.is_file():
        raise FileNotFoundError(
            f"no {WEIGHT_NAME} in {run_dir}; pass a finished run folder (training/run.py exports it)"
        )
    if not REPO_ID.match(repo_id):
        raise ValueError(f"repo id {repo_id!r} must look like ORG/NAME")
    meta = GeneratorMeta.read_lora(weights)  # only LoRAs exported by w2svd carry it
    base_repo = base_repo or meta.base_model
    if not REPO_ID.match(base_repo) or Path(base_repo).exists():
        raise ValueError(
            f"the run's base {base_repo!r} is not a Hub repo id; pass base_repo='ORG/NAME' (--base-repo) naming where "
            "the base model is published, so the card's base_model and snippet point at it"
        )
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="w2svd-stage-"))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / WEIGHT_NAME)
    meta.write_json(folder / "w2svd_lora.json")
    card = lora_card(meta, base_repo, repo_id, _run_defaults(run_dir))
    samples = sorted((run_dir / "validation").glob("*.mp4"))
    if samples:
        (folder / "samples").mkdir(exist_ok=True)
        card += "\n## Validation samples\n\n"
        for video in samples:
            shutil.copyfile(video, folder / "samples" / video.name)
            card += f'<video src="samples/{video.name}" controls loop muted></video>\n'
    (folder / "README.md").write_text(card)
    if comfy:
        from w2svd.comfy import COMFY_WEIGHT_NAME, export_comfy

        export_comfy(weights, folder / COMFY_WEIGHT_NAME)
    return folder


def push(
    run_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    base_repo: str | None = None,
    comfy: bool = False,
) -> str:
    """Create ``repo_id`` (if needed) and upload the staged run folder in one commit; return the commit URL."""
    import shutil

    from huggingface_hub import HfApi

    folder = stage(run_dir, repo_id, base_repo=base_repo, comfy=comfy)
    try:
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=f"Upload w2svd LoRA from {Path(run_dir).name}",
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return info.commit_url


def main(argv: list[str] | None = None) -> int:
    """``python -m w2svd.hub push RUN_DIR ORG/NAME [--private]`` (or ``stage ... --out DIR`` to inspect first)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m w2svd.hub", description="Publish a distilled LoRA to the Hub.")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("push", "stage"):
        p = sub.add_parser(name, help="upload a run" if name == "push" else "write the upload folder only")
        p.add_argument("run_dir", help="run folder holding pytorch_lora_weights.safetensors")
        p.add_argument("repo_id", help="target Hub repo, ORG/NAME")
        p.add_argument("--base-repo", default=None, help="Hub id of the base model (default: the run's base)")
        p.add_argument("--comfy", action="store_true", help="also upload an original-format (ComfyUI) copy")
        if name == "push":
            p.add_argument("--private", action="store_true")
            p.add_argument("--token", default=None, help="default: HF_TOKEN or the saved login")
            p.add_argument("--endpoint", default=None, help="default: HF_ENDPOINT or huggingface.co")
        else:
            p.add_argument("--out", required=True, help="folder to write")
    args = ap.parse_args(argv)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        if args.command == "stage":
            print(stage(args.run_dir, args.repo_id, args.base_repo, args.comfy, Path(args.out)))
        else:
            url = push(args.run_dir, args.repo_id, args.token, args.private, args.endpoint, args.base_repo, args.comfy)
            print(f"pushed: {url}")
    except (FileNotFoundError, ValueError, HfHubHTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
