"""Resolving model names to local folders: 'embedded', a local path, or a Hugging Face Hub repo id."""

from __future__ import annotations

import os
import re
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED = {"base": ASSETS / "embedded" / "base", "lora": ASSETS / "embedded" / "w2svd-4step"}
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
    if name == "embedded":
        path = EMBEDDED[kind]
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
