"""tools/ship_vae.py: only a decoder fine-tune that is no worse on any held-out figure replaces the base's VAE."""

import json
import sys
from pathlib import Path

import torch
from conftest import TINY_VAE
from diffusers import AutoencoderKLHunyuanVideo
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import ship_vae  # noqa: E402


def make_base(tmp_path):
    torch.manual_seed(0)
    base = tmp_path / "base"
    AutoencoderKLHunyuanVideo(**TINY_VAE).to(torch.float16).save_pretrained(base / "vae")
    (base / "generation_defaults.json").write_text(json.dumps({"num_frames": 5, "height": 32}))
    card = {"vae": {"psnr_heldout_db": 1.0, "decoder_finetune": {"config": "an earlier fine-tune"}}}
    (base / "README.md").write_text(f"# card\n\n```json\n{json.dumps(card)}\n```\n")
    return base


def finetuned(base, tmp_path, part: str, scale: float = 0.0):
    vae = AutoencoderKLHunyuanVideo.from_pretrained(base / "vae", torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.startswith(part):
                p.mul_(scale)
    run = tmp_path / f"run_{part.strip('.')}_{scale}"
    vae.save_pretrained(run / "vae")
    return run


def decoder_bytes(base):
    return (base / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_refuses_an_encoder_change_and_leaves_the_base_alone(tmp_path, capsys):
    base = make_base(tmp_path)
    before = decoder_bytes(base)
    assert ship_vae.main([str(finetuned(base, tmp_path, "encoder.", 0.5)), "--base", str(base), "--clips", "2"]) == 2
    assert "latent space changed" in capsys.readouterr().err
    assert decoder_bytes(base) == before


def test_refuses_a_vae_that_is_not_better(tmp_path, capsys):
    base = make_base(tmp_path)
    before = decoder_bytes(base)
    same = finetuned(base, tmp_path, "decoder.", 1.0)  # identical weights: equal PSNR, so not better
    assert ship_vae.main([str(same), "--base", str(base), "--clips", "2"]) == 1
    assert "not better" in capsys.readouterr().err
    assert decoder_bytes(base) == before


def test_ships_a_decoder_change_and_records_it(tmp_path):
    base = make_base(tmp_path)
    run = finetuned(base, tmp_path, "decoder.conv_out", 0.0)
    assert ship_vae.main([str(run), "--base", str(base), "--clips", "2", "--force"]) == 0
    shipped = AutoencoderKLHunyuanVideo.from_pretrained(base / "vae", torch_dtype=torch.float32)
    stored = load_file(base / "vae" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert not torch.any(shipped.decoder.conv_out.conv.weight)
    assert sorted(p.name for p in base.iterdir()) == ["README.md", "generation_defaults.json", "vae"]
    report = json.loads((base / "README.md").read_text().split("```json\n")[1].split("\n```")[0])
    history = report["vae"]["decoder_finetunes"]  # the older single entry is kept, first
    assert [h.get("config") for h in history] == ["an earlier fine-tune", None] and "decoder_finetune" not in report
    latest = history[-1]
    assert latest["run"] == str(run)
    assert report["vae"]["psnr_heldout_db"] == latest["psnr_heldout_db_fp16_after"]
    assert report["vae"]["psnr_moving_heldout_db"] == latest["psnr_moving_heldout_db_fp16_after"]
    assert "roundtrip_motion" not in report["vae"]  # 5x32x32 clips: the clip encoder cannot judge them


def test_refuses_a_vae_that_is_worse_and_names_the_figure(tmp_path, capsys):
    base = make_base(tmp_path)
    before = decoder_bytes(base)
    broken = finetuned(base, tmp_path, "decoder.conv_out", 50.0)  # output amplified 50x: far worse PSNR
    assert ship_vae.main([str(broken), "--base", str(base), "--clips", "2"]) == 1
    assert "not better (worse on psnr_heldout_db" in capsys.readouterr().err
    assert decoder_bytes(base) == before
