"""W2SVD settings for a 13B run on tiny models: prepared real clips, non-square, guidance, dtype, checkpointing."""

import pytest
import torch
from test_distill import tiny_cfg
from test_prepare import portrait_frames, write_mp4

from w2svd.config import ConfigError
from w2svd.data.prepare import load_prepared, prepare
from w2svd.lora import read_metadata
from w2svd.methods.distill import FAKE, GENERATOR
from w2svd.trainer import build_method, resolve_method, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory, tiny_pipeline_dir):
    """Two captioned mp4s, one per bucket (32x32 and 32x48), prepared at 5 frames with the tiny base."""
    root = tmp_path_factory.mktemp("clips")
    write_mp4(root / "square.mp4", portrait_frames(0, 12))
    write_mp4(root / "wide.mp4", portrait_frames(1, 12)[:, 8:40])  # 32x48
    (root / "square.txt").write_text("a woman with red hair talking\n")
    (root / "wide.txt").write_text("a man with glasses smiling\n")
    out = tmp_path_factory.mktemp("prepared")
    prepare(
        root,
        out,
        str(tiny_pipeline_dir),
        num_frames=5,
        fps=8,
        buckets=[(32, 32), (32, 48)],
        progress=False,
        rank=0,
        world=1,
    )
    return out


def test_two_steps_on_prepared_non_square_clips(tmp_path, tiny_pipeline_dir, prepared_dir):
    over = {"data.height": 32, "data.width": 48, "method.prepared": str(prepared_dir), "max_steps": 2}
    cfg = tiny_cfg(tmp_path, tiny_pipeline_dir, **over)
    out = train(cfg, progress=False)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "cache").exists()  # the synthetic portrait cache was not built
    m = build_method(cfg, CPU)
    assert torch.equal(m.cache["latents"], load_prepared(prepared_dir, "32x48")["latents"])
    assert m.batch(0)["x0_real"].shape == (2, 4, 2, 8, 12)  # (B, C, F', H', W')
    assert m.sample(["a man smiling"], [0]).shape == (1, 3, 5, 32, 48)  # validation samples at height x width


def test_prepared_errors_name_the_fix(tmp_path, tiny_pipeline_dir, prepared_dir):
    with pytest.raises(ConfigError, match="has no index.json"):
        build_method(tiny_cfg(tmp_path, tiny_pipeline_dir, **{"method.prepared": str(tmp_path)}), CPU)
    over = {"method.prepared": str(prepared_dir), "data.width": 40}
    with pytest.raises(ConfigError, match=r"32x40.*\['32x32', '32x48'\]"):
        build_method(tiny_cfg(tmp_path, tiny_pipeline_dir, **over), CPU)
    over = {"method.prepared": str(prepared_dir), "data.num_frames": 9}
    with pytest.raises(ConfigError, match="num_frames=9.*--num-frames 5"):
        build_method(tiny_cfg(tmp_path, tiny_pipeline_dir, **over), CPU)
    with pytest.raises(ConfigError, match="needs method.prepared"):
        build_method(tiny_cfg(tmp_path, tiny_pipeline_dir, **{"data.width": 48}), CPU)
    with pytest.raises(ConfigError, match="data.height=0 must be >= 1"):
        tiny_cfg(tmp_path, **{"data.height": 0})


def test_embedded_guidance_reaches_every_role_and_the_metadata(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"method.random_base.transformer.guidance_embeds": True, "method.guidance": 6.0})
    m = build_method(cfg, CPU)
    batch = m.batch(0)
    torch.manual_seed(0)
    x = torch.randn_like(batch["x0_real"])
    s = torch.full((x.shape[0],), 0.7)
    with torch.no_grad():
        at6 = {r: m.score(r, batch["cond"])(x, s) for r in (GENERATOR, FAKE)}
        at6["real"] = m.real_score(batch["cond"], None)(x, s)
        m.cfg.guidance = 1.0
        at1 = {r: m.score(r, batch["cond"])(x, s) for r in (GENERATOR, FAKE)}
        at1["real"] = m.real_score(batch["cond"], None)(x, s)
    assert all(not torch.allclose(at6[k], at1[k]) for k in at6)
    m.cfg.guidance = 6.0
    assert m.generator_meta().guidance_scale == 6.0
    m.export(tmp_path / "export")
    assert read_metadata(tmp_path / "export")["guidance_scale"] == 6.0
    with pytest.raises(ConfigError, match="guidance=6.0 has no effect"):
        build_method(tiny_cfg(tmp_path, **{"method.guidance": 6.0}), CPU)


def test_bfloat16_teacher_keeps_trained_weights_in_fp32(tmp_path):
    with pytest.raises(ConfigError, match=r"dtype='bf16' must be one of \['float32', 'bfloat16', 'float16'\]"):
        resolve_method(tiny_cfg(tmp_path, **{"method.dtype": "bf16"}))
    m = build_method(tiny_cfg(tmp_path, **{"method.dtype": "bfloat16"}), CPU)
    frozen = [p for n, p in m.transformer.named_parameters() if "lora" not in n]
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for r in (GENERATOR, FAKE) for p in m.params[r])
    for phase in (FAKE, GENERATOR):
        m.arm(phase)
        loss, _ = m.loss(phase, m.batch(1))
        loss.backward()
        grads = [p.grad for p in m.params[phase] if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(tmp_path):
    m = build_method(tiny_cfg(tmp_path, **{"method.gradient_checkpointing": True}), CPU)
    assert m.transformer.is_gradient_checkpointing
    with torch.no_grad():
        for p in m.params[GENERATOR] + m.params[FAKE]:
            p.normal_(0, 0.2)

    def run(phase):
        saved = []
        m.arm(phase)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss, _ = m.loss(phase, m.batch(2))
        m.arm(phase)
        loss.backward()
        grads = [p.grad.clone() for p in m.params[phase]]
        for p in m.params[phase]:
            p.grad = None
        return loss.detach(), grads, sum(saved)

    for phase in (FAKE, GENERATOR):
        loss_on, grads_on, saved_on = run(phase)
        m.transformer.disable_gradient_checkpointing()
        loss_off, grads_off, saved_off = run(phase)
        m.transformer.enable_gradient_checkpointing()
        assert saved_on < saved_off  # checkpointing was in effect
        torch.testing.assert_close(loss_on, loss_off)
        for a, b in zip(grads_on, grads_off, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="gradient_checkpointing with method.discriminator"):
        resolve_method(tiny_cfg(tmp_path, **{"method.gradient_checkpointing": True, "method.discriminator": True}))
