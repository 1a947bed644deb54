"""The inference API: loading, input checks, few-step vs baseline, and parity with a stock diffusers call."""

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from stock_pipeline import stock_few_step_video

from w2svd.pipeline import VideoGenerator

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
PROMPT = "a woman with long red hair and glasses talking against a teal background"


def train_tiny_lora(tmp, base_dir, validate_every: int = 0, **method):
    """A 4-step generator LoRA trained for 4 loop steps on the tiny pipeline (``method``: overrides)."""
    from w2svd.config import from_dict
    from w2svd.trainer import train
    from w2svd.training.config import TrainConfig

    data = yaml.safe_load((ROOT / "training/configs/tiny_w2svd.yaml").read_text())
    data["method"].pop("random_base")
    data["method"].update(base=str(base_dir), cache_dir=str(tmp / "cache"), generator_lr=0.05)
    data["method"].update(fake_updates_per_generator_update=1, **method)
    data.update(output_dir=str(tmp / "run"), max_steps=4, validate_every=validate_every)
    return train(from_dict(TrainConfig, data), progress=False)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_pipeline_dir):
    return train_tiny_lora(tmp_path_factory.mktemp("lora"), tiny_pipeline_dir)


@pytest.fixture(scope="module")
def gen(tiny_pipeline_dir, lora_dir):
    return VideoGenerator.from_pretrained(str(tiny_pipeline_dir), lora=str(lora_dir), device="cpu")


def test_few_step_and_baseline_shapes_timings_and_nfe(gen):
    fs = gen.few_step([PROMPT], [7])
    base = gen.baseline([PROMPT], [7], steps=3)
    assert fs.frames.shape == base.frames.shape == (1, 5, 32, 32, 3) and fs.frames.dtype == np.uint8
    assert fs.nfe == 4 and base.nfe == 3
    assert 0 < fs.denoise_seconds <= fs.total_seconds
    assert fs.frames.std() > 0 and not np.array_equal(fs.frames, base.frames)
    again = gen.few_step([PROMPT], [7])
    assert np.array_equal(fs.frames, again.frames)  # same seed, same video


def test_same_initial_noise_for_both_sides(gen):
    a, b = gen.initial_noise([3, 4]), gen.initial_noise([3])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])


def test_a_seeds_few_step_video_does_not_depend_on_its_batch(gen):
    """Re-noising is per sample: the same seed gives the same video alone, first or second in a batch."""
    other = "a man with short black hair and brown eyes, no glasses, nodding against a grey background"
    alone = gen.few_step([PROMPT], [7]).frames[0]
    first = gen.few_step([PROMPT, other], [7, 8]).frames[0]
    second = gen.few_step([other, PROMPT], [8, 7]).frames[1]
    for batched in (first, second):  # batched matmuls and prompt padding differ by rounding only
        assert np.abs(alone.astype(int) - batched.astype(int)).max() <= 2


def test_re_noising_never_repeats_the_initial_noise(gen):
    from w2svd.sampling import SeededRenoise

    noise = gen.initial_noise([7, 8])
    draws = SeededRenoise([7, 8])
    first, second = draws(noise), draws(noise)
    for i in range(2):
        assert not torch.allclose(first[i], noise[i]) and not torch.allclose(first[i], second[i])
    assert torch.equal(SeededRenoise([8])(noise[1:])[0], first[1])  # a sample's draws follow its seed alone


@pytest.mark.parametrize(
    ("prompt", "seed", "steps", "message"),
    [
        ("   ", 0, None, "prompt is empty"),
        ("word " * 300, 0, None, "at most 256"),
        (PROMPT, -1, None, "seed=-1 must be an integer in"),
        (PROMPT, 2**32, None, "seed=4294967296"),
        (PROMPT, 0, 3, "supports \\[4\\] steps, not 3"),
    ],
)
def test_bad_inputs_are_named(gen, prompt, seed, steps, message):
    with pytest.raises(ValueError, match=message):
        gen.few_step([prompt], [seed], steps=steps)


def test_stock_diffusers_pipeline_reproduces_the_few_step_video(gen, tiny_pipeline_dir, lora_dir):
    """The model card's snippet: stock HunyuanVideoPipeline + load_lora_weights + sigmas= + stochastic sampling."""
    ours = gen.few_step([PROMPT], [11]).frames[0]
    stock = stock_few_step_video(tiny_pipeline_dir, lora_dir, PROMPT, 11, gen.defaults)
    assert stock.shape == ours.shape
    assert np.abs(stock.astype(int) - ours.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def euler_lora_dir(tmp_path_factory, tiny_pipeline_dir):
    """A generator trained with deterministic Euler steps (method.renoise=false) instead of re-noising."""
    return train_tiny_lora(tmp_path_factory.mktemp("euler_lora"), tiny_pipeline_dir, renoise=False)


def test_a_generator_trained_with_euler_steps_samples_and_is_carded_without_re_noising(
    tiny_pipeline_dir, euler_lora_dir
):
    from w2svd.cards import lora_card
    from w2svd.generator_meta import GeneratorMeta
    from w2svd.lora import read_metadata

    meta = read_metadata(euler_lora_dir)
    assert meta["renoise"] is False
    euler = VideoGenerator.from_pretrained(str(tiny_pipeline_dir), lora=str(euler_lora_dir), device="cpu")
    ours = euler.few_step([PROMPT], [11]).frames[0]
    stock = stock_few_step_video(tiny_pipeline_dir, euler_lora_dir, PROMPT, 11, euler.defaults)
    assert np.abs(stock.astype(int) - ours.astype(int)).max() <= 1  # stochastic_sampling=False, no global seed
    card = lora_card(
        GeneratorMeta.from_dict(meta, "test"), "base", "lora", {"height": 32, "width": 32, "num_frames": 5}
    )
    assert "stochastic_sampling=False" in card and "deterministic Euler steps" in card
    assert "torch.manual_seed" not in card  # nothing draws from the global RNG


def test_training_rollout_and_validation_samples_follow_method_renoise(tmp_path, tiny_pipeline_dir, monkeypatch):
    import w2svd.methods.distill as distill

    seen = {"rollout": [], "validation": []}
    rollout, videos = distill.rollout, distill.few_step_videos

    def spy_rollout(*args):
        seen["rollout"].append(args[-1])
        return rollout(*args)

    def spy_videos(*args, **kw):
        seen["validation"].append(kw["renoise"])
        return videos(*args, **kw)

    monkeypatch.setattr(distill, "rollout", spy_rollout)
    monkeypatch.setattr(distill, "few_step_videos", spy_videos)
    train_tiny_lora(tmp_path, tiny_pipeline_dir, validate_every=2, renoise=False)
    assert seen["rollout"] and set(seen["rollout"]) == {False}
    assert seen["validation"] and set(seen["validation"]) == {False}


def test_the_rollout_with_euler_steps_draws_no_re_noising():
    from w2svd.algorithm import rollout
    from w2svd.sampling import get_sigmas, sample_euler

    def v(x, s):
        return 0.5 * x + s

    def no_draws(x):
        raise AssertionError("a deterministic rollout drew re-noising noise")

    noise, sigmas = torch.randn(2, 3, 4), get_sigmas(4, 3.0)
    assert torch.equal(rollout(v, noise, sigmas, 3, no_draws, renoise=False), sample_euler(v, noise, sigmas[:4]))
    draws = torch.Generator().manual_seed(0)
    renoised = rollout(v, noise, sigmas, 3, lambda x: torch.randn(x.shape, generator=draws))
    assert not torch.allclose(renoised, sample_euler(v, noise, sigmas[:4]))  # the default re-noises
    assert torch.equal(rollout(v, noise, sigmas, 0, no_draws, renoise=False), noise)


def test_missing_and_mismatched_models_are_named(tmp_path, tiny_pipeline_dir):
    from w2svd.hub import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not an existing path nor a Hub repo id"):
        VideoGenerator.from_pretrained("./no/such/folder", device="cpu")
    g = VideoGenerator.from_pretrained(str(tiny_pipeline_dir), device="cpu")
    with pytest.raises(FileNotFoundError, match="no LoRA weights"):
        g.load_lora(str(tmp_path))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        g.load_lora(str(bad))
    with pytest.raises(RuntimeError, match="no distilled LoRA loaded"):
        g.few_step([PROMPT], [0])


@pytest.mark.parametrize("bad", [0.5, "2", True, 31.0])
def test_a_bad_true_cfg_scale_in_generation_defaults_is_named_with_its_file(tmp_path, bad):
    import json

    from w2svd.pipeline import GenerationDefaults

    (tmp_path / "generation_defaults.json").write_text(json.dumps({"num_inference_steps": 28, "true_cfg_scale": bad}))
    with pytest.raises(ValueError, match=r"generation_defaults.json: true_cfg_scale=.* must be a number in \[1, 30\]"):
        GenerationDefaults.from_folder(tmp_path)


def test_the_base_card_states_the_guidance_and_its_nfe():
    from w2svd.cards import base_card

    d = {"height": 64, "width": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 28, "guidance_scale": 1.0}
    d["flow_shift"] = 3.0
    assert "NFE = steps" in base_card(d, {}, {}) and "true_cfg_scale" not in base_card(d, {}, {})
    guided = base_card({**d, "true_cfg_scale": 2.0}, {}, {})
    assert "NFE = 2 x steps = 56" in guided and 'true_cfg_scale=2, negative_prompt="",' in guided


def test_the_lora_card_names_a_guided_teacher():
    from w2svd.cards import lora_card
    from w2svd.generator_meta import GeneratorMeta

    meta = GeneratorMeta({"4": [1.0, 0.9, 0.8, 0.6, 0.0]}, 4, guidance_scale=1.0)
    size = {"height": 64, "width": 64, "num_frames": 9}
    assert "classifier-free guidance" not in lora_card(meta, "base", "lora", size)
    card = lora_card(dataclasses.replace(meta, real_cfg_scale=2.0), "base", "lora", size)
    assert "Distilled from the base sampled with classifier-free guidance 2 (the real score" in card
    banded = dataclasses.replace(meta, real_cfg_scale=1.5, training={"real_cfg_levels": [0.4, 0.75]})
    assert "guidance 1.5 at the distribution-matching noise levels 0.4-0.75, 1 elsewhere" in lora_card(
        banded, "base", "lora", size
    )


# ---- weights validated on load (issue 18) ----------------------------------------------------------------------
def altered_lora(src, dst, tensors=None, meta=None):
    """A copy of the LoRA in ``src`` with its tensors and/or w2svd metadata changed by the given functions."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from w2svd.lora import META_KEY, WEIGHT_NAME

    with safe_open(src / WEIGHT_NAME, "pt") as f:
        header, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    state = tensors(state) if tensors else state
    header[META_KEY] = json.dumps(meta(json.loads(header[META_KEY])) if meta else json.loads(header[META_KEY]))
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, dst / WEIGHT_NAME, metadata=header)
    return dst


def with_nan(state):
    key = sorted(state)[0]
    return {**state, key: torch.full_like(state[key], float("nan"))}


def half_the_modules(state):
    modules = sorted({k.split(".lora_")[0] for k in state})
    return {k: v for k, v in state.items() if k.split(".lora_")[0] in modules[: len(modules) // 2]}


def without_a_b_weight(state):
    return {k: v for i, (k, v) in enumerate(sorted(state.items())) if not (i == 1 and ".lora_B." in k)}


def sigmas(values):
    return lambda m: {**m, "sigmas_by_steps": {"4": values} if values is not None else {}}


@pytest.mark.parametrize(
    ("tensors", "meta", "message"),
    [
        (with_nan, None, "holds NaN or infinite values"),
        (half_the_modules, None, r"is incomplete: \d+ of the \d+ modules its config targets have no weights"),
        (without_a_b_weight, None, "has no lora_B weight; the file is incomplete"),
        (None, sigmas(None), "sigmas_by_steps must be a non-empty mapping"),
        (None, sigmas([0.2, 0.5, 0.7, 0.9, 0.0]), "must be 4 \\+ 1 finite numbers falling strictly from 1.0 to 0.0"),
        (None, sigmas([1.0, float("nan"), 0.5, 0.2, 0.0]), "falling strictly"),
        (None, sigmas([1.0, 0.5, 0.0]), "falling strictly"),
        (None, lambda m: {**m, "default_steps": 7}, r"default_steps=7 is not one of \['4'\]"),
        (None, lambda m: {**m, "base_model": "embedded"}, "was distilled from base 'embedded' but the loaded base is"),
    ],
)
def test_broken_or_mismatched_loras_are_refused_and_the_loaded_one_stays(
    gen, lora_dir, tmp_path, tensors, meta, message
):
    from w2svd.lora import LoraMismatchError

    before = gen.few_step([PROMPT], [5]).frames
    bad = altered_lora(lora_dir, tmp_path / "bad", tensors, meta)
    with pytest.raises(LoraMismatchError, match=message):
        gen.load_lora(str(bad))
    assert np.array_equal(gen.few_step([PROMPT], [5]).frames, before)  # nothing changed by the refused load


@pytest.mark.parametrize("base", [None, "org/some-base", "/elsewhere/a-copy-of-the-base"])
def test_a_lora_whose_base_cannot_be_known_loads_with_a_warning(gen, lora_dir, tmp_path, base):
    def named(m):
        return {k: v for k, v in m.items() if k != "base_model"} | ({"base_model": base} if base else {})

    with pytest.warns(UserWarning, match="cannot tell whether it was distilled from this base"):
        gen.load_lora(str(altered_lora(lora_dir, tmp_path / "u", meta=named)))
    gen.load_lora(str(lora_dir))


def test_two_different_hub_bases_are_a_mismatch():
    from w2svd.generator_meta import GeneratorMeta
    from w2svd.lora import LoraMismatchError

    g = VideoGenerator.__new__(VideoGenerator)
    g.base_name = "org/base-b"
    with pytest.raises(LoraMismatchError, match="distilled from base 'org/base-a'"):
        g.check_base(GeneratorMeta({"1": [1.0, 0.0]}, 1, base_model="org/base-a"), "x.safetensors")
    g.check_base(GeneratorMeta({"1": [1.0, 0.0]}, 1, base_model="org/base-b"), "x.safetensors")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_frames": 10}, r"num_frames=10 must be 4k \+ 1"),
        ({"height": 0}, "height=0 must be a whole number >= 1"),
        ({"width": 64.5}, "width=64.5 must be a whole number"),
        ({"num_inference_steps": "28"}, "num_inference_steps='28' must be a whole number"),
        ({"flow_shift": -1}, "flow_shift=-1 must be a number > 0"),
        ({"guidance_scale": True}, "guidance_scale=True must be a number > 0"),
        ({"num_inference_step": 4}, r"unknown setting\(s\) \['num_inference_step'\]; valid: \["),
    ],
)
def test_bad_generation_defaults_are_named_with_their_file(tmp_path, data, message):
    import json

    from w2svd.pipeline import GenerationDefaults

    (tmp_path / "generation_defaults.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"generation_defaults.json: {message}"):
        GenerationDefaults.from_folder(tmp_path)
    (tmp_path / "generation_defaults.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        GenerationDefaults.from_folder(tmp_path)


def test_the_fused_lora_gives_the_same_video_and_the_baseline_stays_bit_exact(gen):
    """Few-step sampling merges the LoRA; the baseline after any number of switches is the untouched base."""
    base_before = gen.baseline([PROMPT], [4], steps=3).frames
    weights = {n: p.detach().clone() for n, p in gen.pipe.transformer.named_parameters() if "lora_" not in n}
    gen.fuse = False
    unfused = gen.few_step([PROMPT], [4]).frames
    gen.fuse = True
    for _ in range(3):
        fused = gen.few_step([PROMPT], [4]).frames
        assert gen._pristine is not None  # merged while sampling few-step
        assert np.abs(fused.astype(int) - unfused.astype(int)).max() <= 1
        assert np.array_equal(gen.baseline([PROMPT], [4], steps=3).frames, base_before)
        assert gen._pristine is None
    after = dict(gen.pipe.transformer.named_parameters())
    assert all(torch.equal(after[n], w) for n, w in weights.items())


def test_two_loras_each_sample_their_own_step_counts(gen, lora_dir, tmp_path):
    four = gen.few_step([PROMPT], [6]).frames
    two_step = altered_lora(
        lora_dir,
        tmp_path / "two",
        tensors=lambda st: {k: 2 * v for k, v in st.items()},
        meta=lambda m: {**m, "sigmas_by_steps": {"2": [1.0, 0.5, 0.0]}, "default_steps": 2},
    )
    try:
        gen.load_lora(str(two_step), add=True)
        assert gen.few_step_options == [2, 4] and gen.lora_meta.default_steps == 4  # the first one's default
        res = gen.few_step([PROMPT], [6], steps=2)
        assert res.nfe == 2 and res.sigmas == [1.0, 0.5, 0.0]
        assert np.array_equal(gen.few_step([PROMPT], [6]).frames, four)  # 4 steps: still the first LoRA alone
        with pytest.raises(ValueError, match=r"samples \[2\] steps, as a LoRA already loaded does"):
            gen.load_lora(str(two_step), add=True)
    finally:
        gen.load_lora(str(lora_dir))  # back to the one LoRA for the other tests
    assert gen.few_step_options == [4]
