"""W2SVD: adapter scale identities, gradient routing, export/reload, resume, stock-pipeline parity."""

import pytest
import torch
from safetensors import safe_open
from tiny_config import tiny_cfg

from w2svd.lora import WEIGHT_NAME, read_metadata
from w2svd.methods.distill import FAKE, GENERATOR
from w2svd.trainer import build_method, train

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def method(tmp_path_factory, tiny_pipeline_dir):
    m = build_method(tiny_cfg(tmp_path_factory.mktemp("d"), tiny_pipeline_dir), torch.device("cpu"))
    with torch.no_grad():  # make both LoRAs non-zero so the identities below are not trivial
        for adapter in (GENERATOR, FAKE):
            for p in m.params[adapter]:
                p.normal_(0, 0.2)
    return m


def velocities(m, batch, x, s):
    out = {}
    with torch.no_grad():
        for key, (adapter, scale) in {"alpha0": (FAKE, 0.0), "alpha1": (FAKE, 1.0), "half": (FAKE, 0.5)}.items():
            out[key] = m.score(adapter, batch["cond"], scale)(x, s)
        m.transformer.disable_adapters()
        out["backbone"] = m.backbone.velocity(x, s, batch["cond"])
        m.transformer.enable_adapters()
        m.cfg.alpha_weak = 0.5
        out["real"] = m.real_score(batch["cond"], None)(x, s)
    return out


def test_scale_identities(method):
    batch = method.batch(0)
    torch.manual_seed(0)
    x = torch.randn_like(batch["x0_real"])
    s = torch.full((x.shape[0],), 0.7)
    v = velocities(method, batch, x, s)
    assert torch.equal(v["alpha0"], v["backbone"])  # alpha = 0 is the frozen teacher (vanilla DMD)
    assert not torch.allclose(v["alpha1"], v["backbone"])
    assert torch.allclose(v["real"], v["half"])  # the real score is the fake LoRA at alpha_weak
    d_half, d_full = (v["half"] - v["backbone"]).norm(), (v["alpha1"] - v["backbone"]).norm()
    assert 0 < d_half < d_full  # strictly between backbone and fake score
    # the fake score is the fake LoRA at scale 1
    assert torch.equal(method.score(FAKE, batch["cond"])(x, s), v["alpha1"])


def test_the_guidance_interval_guides_only_the_samples_inside_it(method, monkeypatch):
    monkeypatch.setattr(method.cfg, "real_cfg_scale", 2.0)
    monkeypatch.setattr(method.cfg, "alpha_weak", 0.25)
    batch = method.batch(0)  # with the empty-prompt condition, as real_cfg_scale > 1 asks
    torch.manual_seed(2)
    x = torch.randn_like(batch["x0_real"])
    s = torch.linspace(0.1, 0.9, x.shape[0])
    with torch.no_grad():
        everywhere = method.real_score(batch["cond"], batch["uncond"])(x, s)
        monkeypatch.setattr(method.cfg, "real_cfg_levels", (0.5, 1.0))
        interval = method.real_score(batch["cond"], batch["uncond"])(x, s)
        unguided = method.real_score(batch["cond"], None)(x, s)
    inside = s >= 0.5
    assert inside.any() and (~inside).any()
    assert torch.allclose(interval[inside], everywhere[inside])
    assert torch.allclose(interval[~inside], unguided[~inside])
    assert not torch.allclose(everywhere[~inside], unguided[~inside])  # guidance does change those samples


def test_outside_the_guidance_interval_the_real_score_takes_the_outside_scale(method, monkeypatch):
    monkeypatch.setattr(method.cfg, "alpha_weak", 0.25)
    monkeypatch.setattr(method.cfg, "real_cfg_scale", 1.5)
    batch = method.batch(0)
    torch.manual_seed(3)
    x = torch.randn_like(batch["x0_real"])
    s = torch.linspace(0.1, 0.9, x.shape[0])
    with torch.no_grad():
        at_15 = method.real_score(batch["cond"], batch["uncond"])(x, s)
        monkeypatch.setattr(method.cfg, "real_cfg_scale", 2.0)
        at_2 = method.real_score(batch["cond"], batch["uncond"])(x, s)
        monkeypatch.setattr(method.cfg, "real_cfg_levels", (0.5, 1.0))
        monkeypatch.setattr(method.cfg, "real_cfg_outside_scale", 1.5)
        two_scales = method.real_score(batch["cond"], batch["uncond"])(x, s)
    inside = s >= 0.5
    assert inside.any() and (~inside).any()
    assert torch.allclose(two_scales[inside], at_2[inside])
    assert torch.allclose(two_scales[~inside], at_15[~inside])
    assert not torch.allclose(at_2[~inside], at_15[~inside])


def test_an_outside_scale_alone_still_asks_the_batch_for_the_empty_prompt(method, monkeypatch):
    monkeypatch.setattr(method.cfg, "real_cfg_levels", (0.4, 0.75))
    monkeypatch.setattr(method.cfg, "real_cfg_outside_scale", 1.5)  # real_cfg_scale stays 1: guided outside only
    assert method.batch(0)["uncond"] is not None
    meta = method.generator_meta()
    assert meta.training["real_cfg_outside_scale"] == 1.5 and meta.training["real_cfg_levels"] == [0.4, 0.75]


@pytest.mark.parametrize("phase", [GENERATOR, FAKE])
def test_only_the_phase_adapter_gets_gradients(method, phase):
    method.cfg.alpha_weak = 0.25
    backbone = {n: p.detach().clone() for n, p in method.transformer.named_parameters() if "lora" not in n}
    torch.manual_seed(1)
    batch = method.batch(3)
    method.arm(phase)  # what the loop does before each phase's loss
    loss, _ = method.loss(phase, batch)
    loss.backward()
    other = FAKE if phase == GENERATOR else GENERATOR
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.params[phase])
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.params[other])
    for n, p in method.transformer.named_parameters():
        if "lora" not in n:
            assert p.grad is None and torch.equal(p, backbone[n]), n
        p.grad = None


def test_switching_roles_never_changes_what_is_trained(method):
    """The bug class of peft's set_adapters: a role switch after the generator's forward used to silence it."""
    batch = method.batch(4)
    x, s = torch.randn_like(batch["x0_real"]), torch.full((batch["x0_real"].shape[0],), 0.5)
    method.arm(GENERATOR)
    flags = {id(p): p.requires_grad for ps in method.params.values() for p in ps}
    with torch.no_grad():
        for role in (FAKE, "real_score", GENERATOR, FAKE):
            method.score(role, batch["cond"])(x, s)
    assert flags == {id(p): p.requires_grad for ps in method.params.values() for p in ps}
    assert all(p.requires_grad for p in method.params[GENERATOR])
    assert not any(p.requires_grad for p in method.params[FAKE])


def test_a_phase_whose_loss_reaches_none_of_its_parameters_stops_the_run(tmp_path, tiny_pipeline_dir, monkeypatch):
    from w2svd.methods.distill import DistillMethod

    monkeypatch.setattr(DistillMethod, "loss", lambda self, phase, batch: (torch.ones((), requires_grad=True), {}))
    cfg = tiny_cfg(tmp_path, tiny_pipeline_dir, max_steps=2)
    with pytest.raises(RuntimeError, match="step 0: the loss of phase 'fake_score' gave its .* parameters no gradient"):
        train(cfg, progress=False)


def test_phases_follow_the_update_ratio(method):
    r = method.cfg.fake_updates_per_generator_update
    phases = [method.phases(s) for s in range(2 * r)]
    assert sum(GENERATOR in p for p in phases) == 2 and all(FAKE in p for p in phases)


def test_run_exports_a_diffusers_lora_that_reproduces_the_generator(tmp_path, tiny_pipeline_dir):
    from diffusers import HunyuanVideoPipeline

    cfg = tiny_cfg(tmp_path, tiny_pipeline_dir, max_steps=3, **{"method.fake_updates_per_generator_update": 1})
    out = train(cfg, progress=False)
    path = out / WEIGHT_NAME
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora" in k and k.startswith("transformer.") for k in keys)
    meta = read_metadata(path)
    assert meta["sigmas_by_steps"]["4"][0] == 1.0 and meta["sigmas_by_steps"]["4"][-1] == 0.0
    assert meta["alpha_weak"] == 0.25 and meta["training_steps"] == 3 and meta["real_cfg_scale"] == 1.0
    # a fresh pipeline + load_lora_weights gives exactly the trained generator's velocity
    m = build_method(cfg, torch.device("cpu"))  # resumes the finished run's last checkpoint
    m.load_trainable_state(__import__("w2svd.training.checkpoint", fromlist=["x"]).load_latest(out / "checkpoints")[0])
    fresh = HunyuanVideoPipeline.from_pretrained(tiny_pipeline_dir)
    fresh.load_lora_weights(str(out), adapter_name="g")
    batch = m.batch(0)
    x = torch.randn_like(batch["x0_real"])
    s = torch.full((x.shape[0],), 0.9)
    c = batch["cond"]
    with torch.no_grad():
        want = m.score(GENERATOR, c)(x, s)
        got = fresh.transformer(x, s * 1000, c.embeds, c.mask, c.pooled, return_dict=False)[0]
    assert torch.equal(want, got)


def test_resume_continues_with_the_same_losses(tmp_path, tiny_pipeline_dir):
    def logged(run_dir):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        values = {}
        for ev_dir in sorted((run_dir / "logs").rglob("events.*")):
            acc = EventAccumulator(str(ev_dir.parent))
            acc.Reload()
            for e in acc.Scalars("fake_score/loss"):
                values[e.step] = e.value
        return values

    full = train(tiny_cfg(tmp_path / "a", tiny_pipeline_dir, max_steps=8, checkpoint_every=4), progress=False)
    split_cfg = tiny_cfg(tmp_path / "b", tiny_pipeline_dir, max_steps=4, checkpoint_every=4)
    train(split_cfg, progress=False)
    split = train(tiny_cfg(tmp_path / "b", tiny_pipeline_dir, max_steps=8, checkpoint_every=4), progress=False)
    a, b = logged(full), logged(split)
    assert sorted(a) == list(range(1, 9)) and sorted(b) == list(range(1, 9))
    assert all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a)
    from w2svd.methods.validation import read_losses

    kept = {e["step"]: e["fake_score/loss"] for e in read_losses(split)}  # the run folder's own loss log
    assert sorted(kept) == list(range(1, 9)) and all(kept[k] == pytest.approx(b[k], rel=1e-6) for k in b)
    wa = safe_open(full / WEIGHT_NAME, "pt")
    wb = safe_open(split / WEIGHT_NAME, "pt")
    assert all(torch.equal(wa.get_tensor(k), wb.get_tensor(k)) for k in wa.keys())


def test_bad_values_are_rejected(tmp_path):
    from w2svd.config import ConfigError
    from w2svd.trainer import resolve_method

    with pytest.raises(ConfigError, match="alpha_weak=1.5 must be in \\[0, 1\\]"):
        resolve_method(tiny_cfg(tmp_path, **{"method.alpha_weak": 1.5}))
    with pytest.raises(ConfigError, match="dm_normalizer"):
        resolve_method(tiny_cfg(tmp_path, **{"method.dm_normalizer": "batch"}))


@pytest.fixture(scope="module")
def gan_method(tmp_path_factory, tiny_pipeline_dir):
    cfg = tiny_cfg(tmp_path_factory.mktemp("g"), tiny_pipeline_dir, **{"method.discriminator": True})
    m = build_method(cfg, torch.device("cpu"))
    with torch.no_grad():
        for p in m.params[FAKE] + m.params[GENERATOR]:
            p.normal_(0, 0.2)
    return m


@pytest.mark.parametrize("phase", [GENERATOR, FAKE])
def test_discriminator_head_learns_with_the_fake_score_and_pushes_the_generator(gan_method, phase):
    m = gan_method
    head = list(m.head.parameters())
    assert set(map(id, head)) <= set(map(id, m.param_groups()[FAKE][0]))  # optimised with the fake score
    m.arm(phase)
    loss, terms = m.loss(phase, m.batch(2))
    loss.backward()
    other = FAKE if phase == GENERATOR else GENERATOR
    assert ("gan/discriminator" if phase == FAKE else "gan/generator") in terms
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.params[phase])
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.params[other])
    head_grads = [p.grad is not None and p.grad.abs().sum() > 0 for p in head]
    assert all(head_grads) if phase == FAKE else not any(head_grads)
    for p in [*head, *m.transformer.parameters()]:
        p.grad = None


def test_discriminator_head_is_checkpointed_but_not_exported(gan_method, tmp_path):
    state = gan_method.trainable_state()
    disc = {k: v.clone() for k, v in state.items() if k.startswith("disc::")}
    assert len(disc) == len(list(gan_method.head.parameters()))
    with torch.no_grad():
        for p in gan_method.head.parameters():
            p.zero_()
    gan_method.load_trainable_state(state | disc)
    assert all(torch.equal(dict(gan_method.head.named_parameters())[k[6:]], v) for k, v in disc.items())
    gan_method.export(tmp_path)
    with safe_open(tmp_path / WEIGHT_NAME, "pt") as f:
        assert all("lora" in k and "disc" not in k for k in f.keys())
    assert read_metadata(tmp_path)["discriminator"] is True


def oracle(target: torch.Tensor):
    """A velocity function whose one-step x0 is ``target`` at every level: v = (x_s - target) / s."""
    return lambda x, s: (x - target) / s.view(-1, *([1] * (x.dim() - 1)))


def test_temporal_term_is_zero_when_the_teacher_changes_frames_as_the_generator_does():
    from w2svd.algorithm import temporal_teacher_loss

    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 3, 5, 5, requires_grad=True)
    shifted = x0.detach() + torch.randn(2, 4, 1, 5, 5)  # a different picture, the same frame-to-frame change
    s = torch.tensor([0.1, 0.2])
    loss, terms = temporal_teacher_loss(x0, oracle(shifted), s, torch.randn_like(x0))
    loss.backward()
    assert terms["temporal/gap"] < 1e-5 and loss.item() < 1e-10
    assert x0.grad.abs().max() < 1e-5


def test_temporal_term_moves_the_frame_change_toward_the_teachers():
    from w2svd.algorithm import temporal_teacher_loss

    torch.manual_seed(1)
    x0 = torch.randn(2, 4, 3, 5, 5, requires_grad=True)
    teacher = torch.randn(2, 4, 3, 5, 5)
    s = torch.tensor([0.15, 0.25])
    loss, terms = temporal_teacher_loss(x0, oracle(teacher), s, torch.randn_like(x0))
    loss.backward()
    with torch.no_grad():
        stepped = x0 - 0.05 * x0.grad
        gap = lambda x: (torch.diff(x, dim=2) - torch.diff(teacher, dim=2)).abs().mean()  # noqa: E731
        assert gap(stepped) < gap(x0) and terms["temporal/gap"] == pytest.approx(gap(x0).item(), rel=1e-5)
    with pytest.raises(ValueError, match=">= 2 latent frames"):
        temporal_teacher_loss(x0[:, :, :1], oracle(teacher[:, :, :1]), s, torch.randn_like(x0[:, :, :1]))


def test_score_gap_target_is_zero_when_both_scores_agree_and_follows_their_gap():
    from w2svd.algorithm import temporal_teacher_loss

    torch.manual_seed(2)
    x0 = torch.randn(2, 4, 3, 5, 5, requires_grad=True)
    teacher, fake = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    s, eps = torch.tensor([0.1, 0.2]), torch.randn_like(x0)
    loss, terms = temporal_teacher_loss(x0, oracle(teacher), s, eps, fake=oracle(teacher))
    assert loss.item() < 1e-10 and terms["temporal/pull_rms"] < 1e-5
    loss, _ = temporal_teacher_loss(x0, oracle(teacher), s, eps, fake=oracle(fake))
    loss.backward()
    with torch.no_grad():  # the generator's change moves against the fake score's, toward the real score's
        direction = torch.diff(teacher, dim=2) - torch.diff(fake, dim=2)
        assert (torch.diff(-x0.grad, dim=2) * direction).sum() > 0


@pytest.mark.parametrize("target", ["real", "score_gap"])
def test_temporal_term_trains_only_the_generator(tmp_path, tiny_pipeline_dir, target, monkeypatch):
    import w2svd.methods.distill as distill

    over = {"method.lambda_temporal": 0.5, "method.temporal_target": target}
    m = build_method(tiny_cfg(tmp_path, tiny_pipeline_dir, **over), torch.device("cpu"))
    given_fake = []
    term = distill.temporal_teacher_loss
    monkeypatch.setattr(distill, "temporal_teacher_loss", lambda *a: given_fake.append(a[4] is not None) or term(*a))
    with torch.no_grad():
        for p in m.params[GENERATOR] + m.params[FAKE]:
            p.normal_(0, 0.2)
    m.arm(GENERATOR)
    loss, terms = m.loss(GENERATOR, m.batch(1))
    loss.backward()
    assert terms["temporal/gap"] > 0 and terms["temporal/change_real"] > 0
    assert given_fake == [target == "score_gap"]  # the fake score is the reference only for the score-gap target
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.params[GENERATOR])
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.params[FAKE])
    assert all(p.grad is None for n, p in m.transformer.named_parameters() if "lora" not in n)


def test_temporal_term_off_leaves_the_generator_loss_as_it_was(tmp_path, tiny_pipeline_dir):
    """lambda_temporal 0 (the default) must train exactly as before the term existed: same loss, same terms."""
    losses = []
    for lam in (0.0, 1e-12):
        m = build_method(tiny_cfg(tmp_path / str(lam), tiny_pipeline_dir, **{"method.lambda_temporal": lam}), "cpu")
        m.arm(GENERATOR)
        loss, terms = m.loss(GENERATOR, m.batch(4))
        losses.append((loss.item(), "temporal/gap" in terms))
    assert losses[0][1] is False and losses[1][1] is True
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-6)


def test_temporal_values_are_rejected(tmp_path):
    from w2svd.config import ConfigError
    from w2svd.trainer import resolve_method

    with pytest.raises(ConfigError, match="lambda_temporal=-0.1 must be >= 0"):
        resolve_method(tiny_cfg(tmp_path, **{"method.lambda_temporal": -0.1}))
    with pytest.raises(ConfigError, match=r"temporal_levels=\[0.3, 0.1\] must be two noise levels"):
        resolve_method(tiny_cfg(tmp_path, **{"method.temporal_levels": [0.3, 0.1]}))
    with pytest.raises(ConfigError, match="temporal_target='fake' must be 'real' or 'score_gap'"):
        resolve_method(tiny_cfg(tmp_path, **{"method.temporal_target": "fake"}))


def test_validation_of_an_ema_run_samples_the_averaged_weights_it_exports(tmp_path, tiny_pipeline_dir, monkeypatch):
    import w2svd.methods.distill as distill

    m = build_method(tiny_cfg(tmp_path, tiny_pipeline_dir, **{"method.ema_decay": 0.5}), torch.device("cpu"))
    name, param = m.roles.named(GENERATOR)[0]
    with torch.no_grad():
        param.add_(1.0)  # the online weights move away from their average
    seen = []
    monkeypatch.setattr(distill, "write_validation_grid", lambda *a: seen.append(param.detach().clone()))
    m.validate(1, tmp_path)
    assert torch.equal(seen[0], m.ema.shadow[name]) and not torch.equal(seen[0], param)
