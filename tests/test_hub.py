"""Hub publishing: the staged folder, a real HfApi upload to a local stand-in server, offline resolve, ComfyUI keys."""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from w2svd.comfy import COMFY_WEIGHT_NAME, to_original
from w2svd.config import from_dict
from w2svd.hub import main, push, stage
from w2svd.lora import WEIGHT_NAME, read_metadata
from w2svd.trainer import train
from w2svd.training.config import TrainConfig

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
BASE = "hunyuanvideo-community/HunyuanVideo"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step tiny W2SVD run (one generator update), with a validation video added."""
    tmp = tmp_path_factory.mktemp("hub_run")
    data = yaml.safe_load((ROOT / "training/configs/tiny_w2svd.yaml").read_text())
    data.update(output_dir=str(tmp / "run"), max_steps=2)
    data["method"]["cache_dir"] = str(tmp / "cache")
    out = train(from_dict(TrainConfig, data), progress=False)
    (out / "validation").mkdir(exist_ok=True)
    (out / "validation" / "step-0000002.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real video")
    return out


def test_stage_holds_lora_card_metadata_and_samples(run_dir, tmp_path):
    folder = stage(run_dir, "me/tiny-w2svd", base_repo=BASE, out=tmp_path / "staged")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["README.md", WEIGHT_NAME, "samples/step-0000002.mp4", "w2svd_lora.json"]
    assert (folder / WEIGHT_NAME).read_bytes() == (run_dir / WEIGHT_NAME).read_bytes()
    meta = read_metadata(run_dir)
    assert json.loads((folder / "w2svd_lora.json").read_text()) == meta
    card = ModelCard((folder / "README.md").read_text())
    assert card.data.base_model == BASE and card.data.pipeline_tag == "text-to-video"
    assert {"lora", "diffusers", "w2svd"} <= set(card.data.tags) and card.data.library_name == "diffusers"
    assert 'pipe.load_lora_weights("me/tiny-w2svd")' in card.text and "samples/step-0000002.mp4" in card.text
    with pytest.raises(ValueError, match="'random-tiny' is not a Hub repo id.*--base-repo"):
        stage(run_dir, "me/tiny-w2svd")
    with pytest.raises(ValueError, match="ORG/NAME"):
        stage(run_dir, "no-slash", base_repo=BASE)


class FakeHub(BaseHTTPRequestHandler):
    """Answers the three Hub API calls HfApi.create_repo + upload_folder make, and keeps what was committed."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path, hub = urlparse(self.path).path, self.server
        hub.calls.append((path, self.headers.get("Authorization")))
        if path == "/api/repos/create":
            payload = json.loads(body)
            hub.created.append(payload)
            return self.reply(200, {"url": f"{hub.url}/{payload['organization']}/{payload['name']}"})
        if path == "/api/validate-yaml":
            return self.reply(200, {"errors": [], "warnings": []})
        if path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            return self.reply(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if path.endswith("/commit/main"):
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    hub.committed[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            oid, repo = hashlib.sha1(body).hexdigest(), path.removeprefix("/api/models/").removesuffix("/commit/main")
            url = f"{hub.url}/{repo}/commit/{oid}"
            return self.reply(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})
        return self.reply(404, {"error": f"fake hub: no route for POST {path}"})

    def do_GET(self):
        self.server.calls.append((urlparse(self.path).path, None))
        self.reply(404, {"error": f"fake hub: no route for GET {self.path}"})


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.calls, server.created, server.committed = [], [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_push_uploads_the_staged_folder_through_hfapi(run_dir, fake_hub, tmp_path):
    url = push(run_dir, "me/tiny-w2svd", token="hf_test", private=True, endpoint=fake_hub.url, base_repo=BASE)
    assert url.startswith(f"{fake_hub.url}/me/tiny-w2svd/commit/")
    assert fake_hub.created == [{"name": "tiny-w2svd", "organization": "me", "visibility": "private", "type": "model"}]
    paths = [p for p, _ in fake_hub.calls]
    assert paths[0] == "/api/repos/create" and paths[-1] == "/api/models/me/tiny-w2svd/commit/main"
    assert all(auth == "Bearer hf_test" for p, auth in fake_hub.calls)
    staged = stage(run_dir, "me/tiny-w2svd", base_repo=BASE, out=tmp_path / "s")
    expected = {p.relative_to(staged).as_posix(): p.read_bytes() for p in staged.rglob("*") if p.is_file()}
    assert fake_hub.committed == expected
    # the CLI reports Hub errors without a traceback
    assert main(["push", str(run_dir), "me/x", "--endpoint", fake_hub.url + "/nowhere", "--base-repo", BASE]) == 2


def test_resolve_offline_from_a_local_cache(tmp_path):
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    code = """
import json
from w2svd.hub import ModelNotFoundError, resolve
out = {"found": str(resolve("org/name"))}
try:
    resolve("org/missing")
except ModelNotFoundError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["found"] == str(snapshot)
    assert "'org/missing' is not in the local cache" in out["error"] and "HF_HUB_OFFLINE=1" in out["error"]


def hunyuan_lora(rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """Random LoRA tensors with the 13B model's shapes (1 double + 1 single block, built on meta)."""
    from accelerate import init_empty_weights
    from diffusers import HunyuanVideoTransformer3DModel

    from w2svd.backbones.hunyuan import HunyuanVideoBackbone

    with init_empty_weights():
        model = HunyuanVideoTransformer3DModel(num_layers=1, num_single_layers=1)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and re.fullmatch(HunyuanVideoBackbone.lora_target_regex, name):
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=gen)
            state[f"transformer.{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=gen)
    return state


def test_comfy_keys_round_trip_through_diffusers_converter():
    from diffusers import HunyuanVideoPipeline

    ours = hunyuan_lora(rank=2, alpha=4.0)
    original = to_original(ours, {"lora_alpha": 4.0, "r": 2})
    assert "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight" in original
    assert original["diffusion_model.single_blocks.0.linear1.lora_B.weight"].shape == (3 * 3072 + 4 * 3072, 8)
    back = HunyuanVideoPipeline.lora_state_dict(dict(original))  # diffusers' own original-format loader
    assert set(back) == set(ours)
    for key in (k for k in ours if ".lora_A." in k):  # same B @ A on random probes; scale lora_alpha / r = 2
        key_b = key.replace(".lora_A.", ".lora_B.")
        x = torch.randn(ours[key].shape[1], 3, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(back[key_b] @ (back[key] @ x), 2.0 * ours[key_b] @ (ours[key] @ x))


def test_stage_comfy_copy(run_dir, tmp_path):
    from safetensors import safe_open

    folder = stage(run_dir, "me/tiny-w2svd", base_repo=BASE, comfy=True, out=tmp_path / "c")
    with safe_open(folder / COMFY_WEIGHT_NAME, "pt") as f:
        keys = list(f.keys())
        assert json.loads(f.metadata()["w2svd"]) == read_metadata(run_dir)
    assert all(k.startswith("diffusion_model.") for k in keys) and len(keys) == 2 * (8 + 2)
