import json
import logging

import pytest
import torch
from conftest import TINY_TEXT, TINY_TRANSFORMER, TINY_VAE
from safetensors.torch import load_file

from w2svd.config import from_dict
from w2svd.trainer import NonFiniteLossError, build_method, train
from w2svd.training.checkpoint import list_checkpoints, load_latest
from w2svd.training.config import TrainConfig


def vae_cfg(out, **kw) -> TrainConfig:
    data = {
        "method": {"name": "vae", "model": TINY_VAE, "crop": 16, "val_clips": 2, "scale_clips": 4},
        "output_dir": str(out),
        "max_steps": 4,
        "batch_size": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "data": {"num_frames": 5, "size": 32},
        "optim": {"lr": 1e-3},
    }
    data.update(kw)
    return from_dict(TrainConfig, data)


def teacher_cfg(out, vae_dir, cache, **kw) -> TrainConfig:
    data = {
        "method": {
            "name": "flow_matching",
            "vae": str(vae_dir),
            "text": TINY_TEXT,
            "transformer": TINY_TRANSFORMER,
            "cache_dir": str(cache),
            "cache_clips": 16,
            "val_prompts": 2,
            "val_steps": 2,
        },
        "output_dir": str(out),
        "max_steps": 2,
        "batch_size": 4,
        "checkpoint_every": 1,
        "log_every": 1,
        "data": {"num_frames": 5, "size": 32},
        "optim": {"lr": 1e-3},
    }
    data.update(kw)
    return from_dict(TrainConfig, data)


def test_vae_run_exports_and_resume_matches_uninterrupted(tmp_path):
    full = train(vae_cfg(tmp_path / "full"), progress=False)
    assert (full / "vae" / "config.json").is_file() and (full / "config.yaml").is_file()
    report = json.loads((full / "vae_report.json").read_text())
    assert report["latent_shape"] == [4, 2, 8, 8]
    # Stop after 2 steps, then re-run the same command to 4: same weights as the uninterrupted run.
    train(vae_cfg(tmp_path / "split", max_steps=2), progress=False)
    train(vae_cfg(tmp_path / "split"), progress=False)
    a = load_file(list_checkpoints(full / "checkpoints")[-1] / "trainable.safetensors")
    b = load_file(list_checkpoints(tmp_path / "split" / "checkpoints")[-1] / "trainable.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_motion_map_marks_only_pixels_that_change():
    from w2svd.methods.vae import motion_map, moving_psnr, psnr

    x = torch.zeros(1, 3, 4, 8, 8)
    x[:, :, 2, 4, 4] = 1.0  # one pixel lights up in frame 2 only
    m = motion_map(x)
    assert m.shape == (1, 1, 4, 8, 8)
    assert m[0, 0, 0].max() == 0  # frame 0 neither changes nor borders the change
    for f in (1, 2, 3):  # frames 1->2 and 2->3 differ, widened by one pixel
        assert m[0, 0, f, 3:6, 3:6].min() == 1.0 and m[0, 0, f].sum() == 9.0
    rec = x.clone()
    rec[:, :, :, 0, 0] = 0.5  # an error on a static pixel does not count
    assert moving_psnr(rec, x) > 100
    miss = torch.zeros_like(x)  # missing the moving pixel counts far more than over the whole clip
    assert moving_psnr(miss, x) < psnr(miss, x) - 5  # 20.3 vs 30.1 dB here


def test_motion_weights_raise_the_vae_loss_on_moving_clips_only(tmp_path):
    method = {"name": "vae", "model": TINY_VAE, "crop": 16, "val_clips": 2, "scale_clips": 4}
    plain = build_method(vae_cfg(tmp_path / "a", method=method), torch.device("cpu"))
    weights = {"motion_weight": 4.0, "temporal_weight": 1.0}
    weighted = build_method(vae_cfg(tmp_path / "b", method={**method, **weights}), torch.device("cpu"))
    weighted.vae.load_state_dict(plain.vae.state_dict())
    batch = plain.batch(0)
    with torch.no_grad():
        base, _ = plain.loss("vae", batch)
        more, logs = weighted.loss("vae", batch)
        assert more > base and "vae/temporal_l1" in logs
        still = {**batch, "video": batch["video"][:, :, :1].expand_as(batch["video"]).contiguous()}
        base_still, _ = plain.loss("vae", still)
        more_still, logs = weighted.loss("vae", still)
    # A frozen clip has no motion, so only the temporal term (reconstruction flicker) can add anything.
    assert abs(float(more_still - base_still) - logs["vae/temporal_l1"]) < 1e-5


def denoiser_method(tmp_path, pipeline_dir, init, **kw):
    method = {
        "name": "vae",
        "init": str(init),
        "decoder_only": True,
        "crop": 16,
        "val_clips": 2,
        "denoiser": str(pipeline_dir),
        **kw,
    }
    return build_method(vae_cfg(tmp_path / "d", batch_size=4, method=method), torch.device("cpu"))


def test_denoiser_decodes_the_teachers_prediction_for_a_share_of_the_batch(tmp_path, tiny_pipeline_dir):
    m = denoiser_method(tmp_path, tiny_pipeline_dir, tiny_pipeline_dir / "vae", denoiser_share=0.5)
    batch = m.batch(3)
    assert all(y % 4 == 0 and x % 4 == 0 for y, x in batch["corners"])  # crops fall on the latent grid
    z = m.denoised_latents(batch)
    with torch.no_grad():
        plain = m.vae.encode(batch["video"]).latent_dist.mode()
    r = 4
    crops = torch.stack(
        [
            zi[..., y // r : y // r + 4, x // r : x // r + 4]
            for zi, (y, x) in zip(m.vae.encode(batch["full"]).latent_dist.mode(), batch["corners"])
        ]
    )
    assert z.shape == plain.shape == (4, 4, 2, 4, 4)
    assert torch.equal(z[2:], crops[2:])  # the rest: the encoder's own latents of the full frame, cropped
    assert not torch.allclose(z[:2], crops[:2], atol=1e-3)  # the leading half: the denoiser's prediction
    assert torch.equal(z, m.denoised_latents(batch))  # the same step draws the same noise
    loss, _ = m.loss("vae", batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert m.vae.decoder.conv_out.conv.weight.grad is not None
    assert all(p.grad is None for p in m.denoiser.transformer.parameters())


def test_denoiser_must_share_the_vae_encoder(tmp_path, tiny_pipeline_dir):
    from diffusers import AutoencoderKLHunyuanVideo

    from w2svd.config import ConfigError

    torch.manual_seed(1)
    other = tmp_path / "other_vae"
    AutoencoderKLHunyuanVideo(**TINY_VAE).save_pretrained(other)
    with pytest.raises(ConfigError, match="was trained on another latent space"):
        denoiser_method(tmp_path, tiny_pipeline_dir, other)
    with pytest.raises(ConfigError, match="method.denoiser needs method.decoder_only"):
        denoiser_method(tmp_path, tiny_pipeline_dir, tiny_pipeline_dir / "vae", decoder_only=False)


def test_vae_config_rejects_negative_weights(tmp_path):
    from w2svd.config import ConfigError

    with pytest.raises(ConfigError, match="method.motion_weight=-1.0 must be >= 0"):
        build_method(vae_cfg(tmp_path, method={"name": "vae", "model": TINY_VAE, "motion_weight": -1.0}), "cpu")


def test_checkpoints_are_pruned_and_corrupt_ones_skipped(tmp_path):
    out = train(vae_cfg(tmp_path / "r", checkpoints_total_limit=2, checkpoint_every=1), progress=False)
    ckpts = list_checkpoints(out / "checkpoints")
    assert [c.name for c in ckpts] == ["checkpoint-00000003", "checkpoint-00000004"]
    with open(ckpts[-1] / "trainable.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"garbage!")
    _, state, path = load_latest(out / "checkpoints")
    assert path == ckpts[0] and state["step"] == 3


def test_teacher_runs_and_exports_a_loadable_pipeline(tmp_path, tiny_vae_dir):
    cfg = teacher_cfg(tmp_path / "t", tiny_vae_dir, tmp_path / "cache")
    cfg.method["ema_decay"] = 0.5
    out = train(cfg, progress=False)
    folder = out / "pipeline"
    assert (folder / "model_index.json").is_file()
    assert json.loads((folder / "generation_defaults.json").read_text())["num_inference_steps"] == 28
    assert list((out / "validation").glob("*.png"))
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(folder)
    assert pipe.transformer.config.in_channels == 4


def test_teacher_loss_is_finite_and_falls_on_a_fixed_batch(tmp_path, tiny_vae_dir):
    cfg = teacher_cfg(tmp_path / "t", tiny_vae_dir, tmp_path / "cache", optim={"lr": 3e-3})
    method = build_method(cfg, torch.device("cpu"))
    params, lr = method.param_groups()["transformer"]
    opt = torch.optim.AdamW(params, lr=lr)
    batch = method.batch(0)
    losses = []
    for _ in range(20):
        torch.manual_seed(0)  # same noise and timesteps each time: a pure fit of one batch
        loss, _ = method.loss("transformer", batch)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_nonfinite_loss_stops_with_step_and_phase(tmp_path):
    cfg = vae_cfg(tmp_path / "nan", optim={"lr": 1e-3})
    method_cls = __import__("w2svd.methods.vae", fromlist=["VAEMethod"]).VAEMethod
    original = method_cls.loss

    def bad_loss(self, phase, batch):
        loss, terms = original(self, phase, batch)
        return loss * float("nan"), terms

    method_cls.loss = bad_loss
    try:
        with pytest.raises(NonFiniteLossError, match="step 0: loss of phase 'vae' is nan"):
            train(cfg, progress=False)
    finally:
        method_cls.loss = original


def nan_loss_on(monkeypatch, calls) -> None:
    """Make the VAE loss NaN on the loss calls (0-based) in ``calls``."""
    from w2svd.methods.vae import VAEMethod

    original, count = VAEMethod.loss, []

    def loss(self, phase, batch):
        value, terms = original(self, phase, batch)
        count.append(phase)
        return (value * float("nan") if len(count) - 1 in calls else value), terms

    monkeypatch.setattr(VAEMethod, "loss", loss)


def test_skip_nonfinite_skips_the_update_counts_and_logs_it(tmp_path, monkeypatch, caplog):
    nan_loss_on(monkeypatch, {1})
    with caplog.at_level(logging.WARNING, logger="w2svd.trainer"):
        out = train(vae_cfg(tmp_path / "r", skip_nonfinite=True, checkpoint_every=4), progress=False)
    assert "step 1: loss of phase 'vae' is nan" in caplog.text and "1 skipped so far" in caplog.text
    _, state, _ = load_latest(out / "checkpoints")
    assert state["step"] == 4 and state["skipped_nonfinite"] == 1
    assert all(int(s["step"]) == 3 for s in state["optimizers"]["vae"]["state"].values())  # 3 updates in 4 steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((out / "logs").rglob("events.*")).parent))
    acc.Reload()
    assert {e.step: e.value for e in acc.Scalars("train/skipped_nonfinite")} == {1: 0, 2: 1, 3: 1, 4: 1}


def test_skip_nonfinite_still_stops_after_too_many_consecutive_skips(tmp_path, monkeypatch):
    nan_loss_on(monkeypatch, set(range(100)))
    cfg = vae_cfg(tmp_path / "r", skip_nonfinite=True, max_steps=20, validate_every=0)
    with pytest.raises(NonFiniteLossError, match="step 10: loss of phase 'vae' is nan.*11 consecutive steps"):
        train(cfg, progress=False)
    a, b = list_checkpoints(tmp_path / "r" / "checkpoints")  # steps 8 and 10: no update in between
    ta, tb = load_file(a / "trainable.safetensors"), load_file(b / "trainable.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    _, state, _ = load_latest(tmp_path / "r" / "checkpoints")
    assert state["skipped_nonfinite"] == 10 and state["optimizers"]["vae"]["state"] == {}


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable.*output_dir=PATH"):
        train(vae_cfg(blocker / "run"), progress=False)


def test_ema_tracks_and_swaps_weights():
    from w2svd.training.ema import EMA

    lin = torch.nn.Linear(2, 2)
    ema = EMA(list(lin.named_parameters()), decay=0.5)
    before = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(2.0)
    ema.update()
    assert torch.allclose(ema.shadow["weight"], before + 1.0)
    with ema.swapped():
        assert torch.allclose(lin.weight, before + 1.0)
    assert torch.allclose(lin.weight, before + 2.0)
    with pytest.raises(ValueError, match="decay=1.0"):
        EMA([], 1.0)


def test_decoder_only_finetune_keeps_the_latent_space(tmp_path):
    from diffusers import AutoencoderKLHunyuanVideo

    first = train(vae_cfg(tmp_path / "v1", max_steps=2), progress=False)
    cfg = vae_cfg(tmp_path / "v2", max_steps=2)
    cfg.method = {"name": "vae", "init": str(first / "vae"), "decoder_only": True, "crop": 16, "val_clips": 2,
                  "scale_clips": 4}  # fmt: skip
    second = train(cfg, progress=False)
    a = AutoencoderKLHunyuanVideo.from_pretrained(first / "vae")
    b = AutoencoderKLHunyuanVideo.from_pretrained(second / "vae")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("decoder."))
    assert a.config.scaling_factor == b.config.scaling_factor


def test_latent_cache_key_follows_the_encoder_side_not_the_decoder(tiny_pipeline_dir):
    from diffusers import HunyuanVideoPipeline

    from w2svd.backbones import backbone_for
    from w2svd.data.latent_cache import _fingerprint

    backbone = backbone_for(HunyuanVideoPipeline.from_pretrained(tiny_pipeline_dir))
    vae, key = backbone.vae, _fingerprint(backbone, [1])
    assert _fingerprint(backbone, [2]) != key  # data settings
    with torch.no_grad():
        vae.decoder.conv_out.conv.weight.add_(1.0)  # a decoder fine-tune keeps the latents and the cache
        vae.post_quant_conv.weight.add_(1.0)
        assert _fingerprint(backbone, [1]) == key
        last = list(vae.encoder.parameters())[-1]  # the encoder's last tensor, past any first-N cut-off
        saved = last.clone()
        last.add_(1.0)
        assert _fingerprint(backbone, [1]) != key
        last.copy_(saved)
    assert _fingerprint(backbone, [1]) == key
    vae.register_to_config(scaling_factor=vae.config.scaling_factor * 2)
    assert _fingerprint(backbone, [1]) != key


def test_sigterm_saves_a_checkpoint_at_the_current_step_and_resume_goes_on(tmp_path, monkeypatch, caplog):
    import os
    import signal

    from w2svd import trainer

    before = signal.getsignal(signal.SIGTERM)
    original = trainer.Run.train_step

    def stopped_at_three(self, step):
        out = original(self, step)
        if step == 2:  # the third step: a scheduler (or `kill`) stops the run
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(trainer.Run, "train_step", stopped_at_three)
    with pytest.raises(KeyboardInterrupt):
        train(vae_cfg(tmp_path / "run", max_steps=6, checkpoint_every=2), progress=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only as long as the run
    assert "SIGTERM: saved a checkpoint at step 3" in caplog.text and "second signal" not in caplog.text
    # the loop stopped after the whole third step and saved it (checkpoint_every 2 would have saved only step 2)
    assert list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name.endswith("00003")
    monkeypatch.setattr(trainer.Run, "train_step", original)
    train(vae_cfg(tmp_path / "run", max_steps=6, checkpoint_every=2), progress=False)  # resumes from step 3
    full = train(vae_cfg(tmp_path / "full", max_steps=6, checkpoint_every=2), progress=False)
    a = load_file(list_checkpoints(full / "checkpoints")[-1] / "trainable.safetensors")
    b = load_file(list_checkpoints(tmp_path / "run" / "checkpoints")[-1] / "trainable.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # stopped and resumed = uninterrupted, bitwise
