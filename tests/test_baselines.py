"""Baselines in the same loop from the same base: LCM (consistency LoRA) and DMD with full copies."""

import json

import numpy as np
import pytest
import torch
import yaml

from w2svd.config import ConfigError, from_dict
from w2svd.lora import WEIGHT_NAME, read_metadata
from w2svd.losses import consistency_distance, consistency_target
from w2svd.methods.roles import FAKE, GENERATOR
from w2svd.pipeline import GENERATOR_META, VideoGenerator
from w2svd.trainer import build_method, resolve_method, train
from w2svd.training.config import TrainConfig

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
PROMPT = "a man with short black hair smiling against a grey background"
LCM = {"name": "lcm", "steps": [4, 2], "rank": 4, "lora_alpha": 4, "lr": 1e-3, "ema_decay": 0.5, "val_prompts": 1}


def cfg_for(out, base_dir, cache_dir, method: dict | None = None, **over) -> TrainConfig:
    """tiny_w2svd.yaml on the tiny pipeline folder; ``method`` replaces its method section (keeping the cache)."""
    data = yaml.safe_load((ROOT / "training/configs/tiny_w2svd.yaml").read_text())
    m = data["method"]
    m.pop("random_base")
    if method is not None:
        m = {"cache_clips": m["cache_clips"], **method}
    data["method"] = {**m, "base": str(base_dir), "cache_dir": str(cache_dir)}
    data.update(output_dir=str(out), **over)
    return from_dict(TrainConfig, data)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # one latent cache for every run of this module


def copies_cfg(out, base_dir, cache_dir, **over) -> TrainConfig:
    cfg = cfg_for(out, base_dir, cache_dir, **over)
    cfg.method.update(roles="copies", alpha_weak=0.0, lambda_gt=0.0, val_prompts=1)
    return cfg


# ---- LCM ---------------------------------------------------------------------------------------------
def test_consistency_target_on_a_single_point_distribution():
    """Data = one point c: v(x, s) = (x - c) / s exactly, the Euler step stays on the line, f = c is consistent."""
    torch.manual_seed(0)
    c, eps = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    s_hi, s_lo = torch.tensor([1.0, 0.7, 0.3]), torch.tensor([0.9, 0.4, 0.0])

    def b(s):
        return s.view(-1, 1, 1, 1, 1)

    x_hi = (1 - b(s_hi)) * c + b(s_hi) * eps

    x_lo, target = consistency_target(lambda x, s: (x - c) / b(s), lambda x, s: c, x_hi, s_hi, s_lo)
    assert torch.allclose(x_lo, (1 - b(s_lo)) * c + b(s_lo) * eps, atol=1e-6)  # on the straight line
    assert torch.equal(target, c) and not target.requires_grad
    for kind in ("huber", "l2"):
        assert consistency_distance(c, target, kind).item() == 0.0
    # a consistency function that is off by 1 everywhere: pseudo-Huber sqrt(1 + h^2) - h, MSE 1
    assert consistency_distance(c + 1, c, "huber", 1e-3).item() == pytest.approx((1 + 1e-6) ** 0.5 - 1e-3)
    assert consistency_distance(c + 1, c, "l2").item() == pytest.approx(1.0)


def test_lcm_teacher_target_and_gradients(tmp_path, tiny_pipeline_dir, cache_dir):
    m = build_method(cfg_for(tmp_path, tiny_pipeline_dir, cache_dir, LCM), torch.device("cpu"))
    assert m.sigmas_by_steps[4][0] == 1.0 and m.sigmas_by_steps[4][-1] == 0.0
    assert all(s in m.teacher_sigmas for s in m.sigmas_by_steps[4])  # sampling points lie on the teacher grid
    assert all(torch.equal(s, t) for s, t in m.pairs)  # the target starts as the student
    with torch.no_grad():
        for p in m.adapters.params[GENERATOR]:
            p.normal_(0, 0.2)
    batch = m.batch(0)
    x, s = torch.randn_like(batch["x0"]), batch["s_hi"]
    with torch.no_grad():
        m.transformer.disable_adapters()
        backbone = m.backbone.velocity(x, s, batch["cond"])
        m.transformer.enable_adapters()
        assert torch.equal(m.teacher_velocity(batch["cond"], None)(x, s), backbone)  # the base alone
    m.arm(GENERATOR)
    loss, _ = m.loss(GENERATOR, batch)
    loss.backward()
    assert all(p.grad is not None for p in m.adapters.params[GENERATOR])
    assert any(p.grad.abs().sum() > 0 for p in m.adapters.params[GENERATOR])
    assert all(t.grad is None for _, t in m.pairs)
    assert all(p.grad is None for n, p in m.transformer.named_parameters() if "lora" not in n)
    old = [t.detach().clone() for _, t in m.pairs]
    m.after_step(GENERATOR)
    for (student, target), t0 in zip(m.pairs, old):  # target <- 0.5 * target + 0.5 * student
        assert torch.allclose(target, 0.5 * t0 + 0.5 * student)


@pytest.fixture(scope="module")
def lcm_run(tmp_path_factory, tiny_pipeline_dir, cache_dir):
    out = tmp_path_factory.mktemp("lcm") / "run"
    return train(cfg_for(out, tiny_pipeline_dir, cache_dir, LCM, max_steps=2), progress=False)


def test_lcm_run_exports_a_lora_with_the_few_step_metadata(lcm_run):
    meta = read_metadata(lcm_run / WEIGHT_NAME)
    assert meta["method"] == "lcm" and meta["renoise"] is True and meta["training_steps"] == 2
    assert sorted(meta["sigmas_by_steps"]) == ["2", "4"] and meta["default_steps"] == 4
    assert {"base_model", "guidance_scale", "sigmas_by_steps"} <= set(meta)
    assert len(meta["sigmas_by_steps"]["4"]) == 5 and meta["sigmas_by_steps"]["2"][-1] == 0.0


# ---- vanilla DMD (LoRA fake score) and DMD with full copies ---------------------------------------
def test_vanilla_dmd_is_the_same_method_with_another_config(tmp_path, tiny_pipeline_dir, cache_dir):
    shipped = yaml.safe_load((ROOT / "training/configs/embedded_dmd.yaml").read_text())["method"]
    cfg = cfg_for(tmp_path / "run", tiny_pipeline_dir, cache_dir, max_steps=2)
    cfg.method.update(alpha_weak=shipped["alpha_weak"], lambda_gt=shipped["lambda_gt"], val_prompts=1)
    meta = read_metadata(train(cfg, progress=False) / WEIGHT_NAME)
    assert meta["method"] == "dmd" and meta["roles"] == "lora" and meta["alpha_weak"] == 0.0 == meta["lambda_gt"]


def test_copies_get_gradients_only_in_their_phase_and_the_teacher_never_changes(tmp_path, tiny_pipeline_dir, cache_dir):
    m = build_method(copies_cfg(tmp_path, tiny_pipeline_dir, cache_dir), torch.device("cpu"))
    teacher = {n: p.detach().clone() for n, p in m.transformer.named_parameters()}
    copies = {r: m.roles.modules[r] for r in (GENERATOR, FAKE)}
    assert not any("lora" in n for n, _ in m.transformer.named_parameters())
    ptrs = {p.data_ptr() for p in m.transformer.parameters()}
    assert all(p.data_ptr() not in ptrs for c in copies.values() for p in c.parameters())  # real copies
    with torch.no_grad():  # a fake score that differs from the teacher, so the DM gradient is not zero
        for p in copies[FAKE].parameters():
            p.add_(0.05 * torch.randn_like(p))
    groups = m.param_groups()
    assert all(len(groups[r][0]) == len(list(copies[r].parameters())) for r in copies)  # every parameter trained
    for phase in (FAKE, GENERATOR):
        before = {r: [p.detach().clone() for p in c.parameters()] for r, c in copies.items()}
        m.arm(phase)
        loss, _ = m.loss(phase, m.batch(1))
        loss.backward()
        other = GENERATOR if phase == FAKE else FAKE
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in copies[phase].parameters()), phase
        assert all(p.grad is None for p in copies[other].parameters()), phase
        assert all(p.grad is None for p in m.transformer.parameters())
        opt = torch.optim.AdamW(groups[phase][0], lr=1e-3)
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert any(not torch.equal(p, b) for p, b in zip(copies[phase].parameters(), before[phase]))
        assert all(torch.equal(p, b) for p, b in zip(copies[other].parameters(), before[other]))
    assert all(torch.equal(p, teacher[n]) for n, p in m.transformer.named_parameters())


def test_copies_need_alpha_weak_zero(tmp_path):
    data = yaml.safe_load((ROOT / "training/configs/embedded_dmd_copies.yaml").read_text())
    data["method"]["alpha_weak"] = 0.25
    with pytest.raises(ConfigError, match="alpha_weak=0.25 must be 0 with method.roles=copies"):
        resolve_method(from_dict(TrainConfig, data))
    data["method"].update(alpha_weak=0.0, roles="copy")
    with pytest.raises(ConfigError, match="roles='copy' must be one of"):
        resolve_method(from_dict(TrainConfig, data))


@pytest.fixture(scope="module")
def copies_run(tmp_path_factory, tiny_pipeline_dir, cache_dir):
    out = tmp_path_factory.mktemp("copies") / "run"
    cfg = copies_cfg(out, tiny_pipeline_dir, cache_dir, max_steps=2)
    cfg.method.update(fake_updates_per_generator_update=1, generator_lr=1e-2)
    return train(cfg, progress=False)


def test_copies_run_exports_a_transformer_folder(copies_run):
    folder = copies_run / "transformer"
    assert (folder / "config.json").is_file() and not (copies_run / WEIGHT_NAME).exists()
    meta = json.loads((folder / GENERATOR_META).read_text())
    assert meta["method"] == "dmd" and meta["roles"] == "copies" and meta["training_steps"] == 2
    assert meta["sigmas_by_steps"]["4"][0] == 1.0 and meta["renoise"] is True


def test_video_generator_samples_with_the_lcm_lora_and_the_copies_transformer(tiny_pipeline_dir, lcm_run, copies_run):
    gen = VideoGenerator.from_pretrained(str(tiny_pipeline_dir), device="cpu")
    base = gen.pipe.transformer
    gen.load_lora(str(lcm_run))
    lcm4, lcm2 = gen.few_step([PROMPT], [3]), gen.few_step([PROMPT], [3], steps=2)
    assert lcm4.frames.shape == (1, 5, 32, 32, 3) and (lcm4.nfe, lcm2.nfe) == (4, 2)

    with pytest.raises(FileNotFoundError, match="not a distilled transformer folder"):
        gen.load_transformer(str(lcm_run))  # a LoRA run has no transformer/ folder
    meta = gen.load_transformer(str(copies_run))
    assert meta.training["roles"] == "copies" and gen.few_step_options == [4]
    dmd = gen.few_step([PROMPT], [3])
    assert dmd.frames.shape == (1, 5, 32, 32, 3) and dmd.frames.dtype == np.uint8 and dmd.nfe == 4
    assert gen.backbone.transformer is base and gen.pipe.transformer is base  # the base is back for baseline
    assert not torch.equal(gen.generator_transformer.x_embedder.proj.weight, base.x_embedder.proj.weight)  # trained
    gen.load_lora(str(lcm_run))  # and back: the LoRA again, the copies transformer dropped
    assert gen.generator_transformer is None and np.array_equal(gen.few_step([PROMPT], [3]).frames, lcm4.frames)


def test_classifier_free_guidance_doubles_the_nfe_and_changes_the_video(tiny_pipeline_dir):
    gen = VideoGenerator.from_pretrained(str(tiny_pipeline_dir), device="cpu")
    plain = gen.baseline([PROMPT], [3], steps=2)
    same = gen.baseline([PROMPT], [3], steps=2, cfg_scale=1.0)
    guided = gen.baseline([PROMPT], [3], steps=2, cfg_scale=4.0)
    assert np.array_equal(plain.frames, same.frames) and (plain.nfe, guided.nfe) == (2, 4)
    assert not torch.allclose(plain.latents, guided.latents)
    # v_u + 4 (v_c - v_u) from the two calls it is made of: check one Euler step by hand.
    cond, uncond = gen.backbone.encode_prompts([PROMPT]), gen.backbone.encode_prompts([""])
    noise = gen.initial_noise([3])
    with torch.no_grad():
        v_c, v_u = (gen.backbone.velocity(noise, 1.0, c) for c in (cond, uncond))
    one = gen.generate([PROMPT], [3], sigmas=torch.tensor([1.0, 0.0]), cfg_scale=4.0)
    assert torch.allclose(one.latents, noise - (v_u + 4.0 * (v_c - v_u)), atol=1e-5)
    for bad in (0.5, 31.0, "3"):
        with pytest.raises(ValueError, match="cfg_scale="):
            gen.baseline([PROMPT], [3], steps=2, cfg_scale=bad)
