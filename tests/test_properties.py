"""Property tests: random inputs to the generation checks and random configs; every outcome is a valid result
or a clear error (ValueError / gr.Error / ConfigError) that names the bad value, never another exception."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import typing
import unicodedata
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import yaml
from app_fixtures import ROOT, export_tiny_lora
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from w2svd.app_utils import VideoStore, load_generator
from w2svd.config import ConfigError, from_dict, load_config
from w2svd.demo import DemoHandlers
from w2svd.pipeline import MAX_PROMPT_CHARS, MAX_SEED
from w2svd.trainer import resolve_method
from w2svd.training.config import TrainConfig

FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROMPT = "a young woman with curly red hair and green eyes, no glasses, talking against a teal background"
WHITESPACE = " \t\n\r\x0b\x0c\x1c\u00a0\u2003\u3000"
prompts = st.one_of(
    st.text(max_size=300),  # any unicode, sometimes over 256 tokens
    st.text(alphabet=WHITESPACE, max_size=12),  # looks empty
    st.integers(0, 400).map(lambda n: "word " * n),  # around the 256-token limit
    st.just(PROMPT),
)
seeds = st.one_of(
    st.integers(0, MAX_SEED - 1),
    st.sampled_from([-1, 0, MAX_SEED - 1, MAX_SEED, 2**64]),
    st.integers(),
    st.integers(0, MAX_SEED - 1).map(np.int64),
    st.booleans(),
    st.floats(),
    st.none(),
    st.text(max_size=4),
)
steps = st.one_of(st.integers(-2, 10), st.booleans(), st.floats(0, 8), st.none(), st.text(max_size=2))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests share the CPU with a server process


@pytest.fixture(scope="module")
def handlers(tiny_pipeline_dir, tmp_path_factory) -> DemoHandlers:
    """The app's handlers around the tiny pipeline with a tiny W2SVD LoRA (2 or 4 steps)."""
    tmp = tmp_path_factory.mktemp("props")
    lora = export_tiny_lora(tiny_pipeline_dir, tmp / "lora")
    generator = load_generator(str(tiny_pipeline_dir), str(lora), "cpu")
    return DemoHandlers(generator, VideoStore(tmp / "videos", max_files=8), "tiny", str(lora))


def n_tokens(handlers: DemoHandlers, prompt: str) -> int:
    return len(handlers.generator.pipe.tokenizer(prompt).input_ids)


# ---- generation inputs --------------------------------------------------------------------------
@FEW
@given(prompt=st.one_of(prompts, st.none()))
def test_check_prompt_cleans_the_prompt_or_says_what_is_wrong(handlers, prompt):
    try:
        cleaned = handlers.generator.check_prompt(prompt)
    except ValueError as e:
        message = str(e)
        if prompt is None:
            assert "prompt is empty" in message
        elif len(prompt) > MAX_PROMPT_CHARS:
            assert f"prompt is {len(prompt):,} characters long" in message
        elif any(unicodedata.category(c) == "Cc" and not c.isspace() for c in prompt):
            assert "control character U+" in message
        elif not any(not c.isspace() and unicodedata.category(c) != "Cf" for c in prompt):
            assert "prompt is empty" in message  # only whitespace or invisible format characters
        else:
            assert "over 256 tokens" in message and "at most 256" in message
            assert n_tokens(handlers, " ".join(prompt.split())) > 256
        return
    assert cleaned == " ".join(prompt.split()) and cleaned
    assert n_tokens(handlers, cleaned) <= 256


@FEW
@given(seed=seeds)
def test_check_seed_accepts_exactly_the_integers_in_range(handlers, seed):
    try:
        checked = handlers.generator.check_seed(seed)
    except ValueError as e:
        assert f"seed={seed!r} must be an integer in [0, 2**32)" in str(e)
        assert isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < MAX_SEED
        return
    assert type(checked) is int and checked == seed and 0 <= checked < MAX_SEED


@FEW
@given(  # each input is valid more often than not, so some examples pass all three checks
    prompt=st.one_of(st.just(PROMPT), prompts),
    seed=st.one_of(st.integers(0, MAX_SEED - 1), seeds),
    few_steps=st.one_of(st.sampled_from([2, 4]), steps),
)
def test_app_validation_names_the_first_bad_input(handlers, prompt, seed, few_steps):
    try:
        clean_prompt, clean_seed, clean_steps = handlers.validate(prompt, seed, few_steps)
    except gr.Error as e:
        message = e.message
        try:  # its own rules are the property of test_check_prompt_cleans_the_prompt_or_says_what_is_wrong
            handlers.generator.check_prompt(prompt)
            prompt_ok = True
        except ValueError:
            prompt_ok = False
        seed, few_steps = (int(v) if isinstance(v, float) and v.is_integer() else v for v in (seed, few_steps))
        if not prompt_ok:
            assert message.startswith("prompt ")
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < MAX_SEED:
            assert f"seed={seed!r}" in message
        else:
            assert f"few_steps={few_steps!r} is not supported: this LoRA supports [2, 4] steps" in message
        return
    assert clean_prompt == " ".join(prompt.split()) and clean_seed == seed and clean_steps == few_steps
    assert type(clean_steps) is int and clean_steps in handlers.step_options


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=st.one_of(st.text(min_size=1, max_size=40), st.just(PROMPT)),
    seed=st.one_of(st.integers(0, MAX_SEED - 1), st.just(MAX_SEED)),
    few_steps=st.sampled_from([2, 4, 2, 4, 3]),  # mostly valid: most examples generate a video
)
def test_api_returns_a_video_for_the_request_or_a_clear_error(handlers, prompt, seed, few_steps):
    try:
        few_path, base_path, stats = handlers.api(prompt, seed, few_steps, False)
    except gr.Error as e:
        known = ("prompt is empty", "prompt contains the control", f"seed={seed!r}", f"few_steps={few_steps!r}")
        assert any(s in e.message for s in known), e.message
        event("rejected")
        return
    event("generated")
    assert Path(few_path).read_bytes()[4:8] == b"ftyp" and base_path is None
    assert stats["seed"] == seed and stats["few_step"]["nfe"] == few_steps
    assert stats["prompt"] == " ".join(prompt.split())
    assert len(list(handlers.videos.folder.glob("*.mp4"))) <= handlers.videos.max_files


# ---- configs ------------------------------------------------------------------------------------
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]
TYPOS = ["max_step", "batchsize", "Seed", "outputdir", "optim.lr", "method_name"]
unit = st.floats(1e-6, 1.0)
GOOD = {  # valid values for some TrainConfig keys; a key left out keeps its default
    "output_dir": st.text(min_size=1, max_size=12),
    "seed": st.integers(0, 2**31),
    "max_steps": st.integers(1, 10**6),
    "batch_size": st.integers(1, 64),
    "checkpoints_total_limit": st.integers(1, 5),
    "validate_every": st.integers(0, 100),
    "mixed_precision": st.sampled_from(["no", "bf16", "fp16"]),
    "optim": st.fixed_dictionaries(
        {},
        optional={
            "lr": unit,
            "betas": st.lists(unit, min_size=2, max_size=2),
            "schedule": st.sampled_from(["constant", "cosine"]),
            "warmup_steps": st.integers(0, 100),
        },
    ),
    "data": st.fixed_dictionaries({}, optional={"num_frames": st.sampled_from([1, 5, 9]), "size": st.integers(8, 128)}),
}
VAE = {"name": "vae", "init": "runs/vae"}  # a method section that passes its own checks
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(), st.text(max_size=8), st.just(10**400)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
GOOD_OVERRIDES = ["max_steps=20", "seed=3", "method.generator_lr=1e-3", "optim.betas=[0.9, 0.99]",
                  "optim.schedule=cosine", "data.num_frames=5", "mixed_precision=bf16", "output_dir=runs/x",
                  "validate_every=0"]  # fmt: skip
DOTTED = [*TRAIN_KEYS, "optim.lr", "optim.betas", "optim.betas.0", "data.num_frames", "method.name", "method.steps",
          "method.alpha_weak", "max_steps.sub", "a..b", "", *TYPOS]  # fmt: skip
RAW_VALUES = ["10", "-1", "0", "1e-4", "1e400", "9" * 400, ".nan", "abc", "[0.9]", "[0.9, 0.999]", "[1, 2, 3]",
              "{name: vae}", "{lr: 2}", "[1", "{a", "!!python/object:os.system x", "@x", "'quoted'", "true",
              "null", "vae", "lcm", "[vae]", "2020-01-01", "cosine", "bf16", "5", "8"]  # fmt: skip
bad_override = st.one_of(
    st.builds("{}={}".format, st.sampled_from(DOTTED), st.one_of(st.sampled_from(RAW_VALUES), st.text(max_size=12))),
    st.sampled_from(DOTTED),  # no '='
)
# (overrides, the bad ones): a few valid overrides and at most one random one, in any order
overrides = st.tuples(
    st.lists(st.sampled_from(GOOD_OVERRIDES), max_size=3), st.lists(bad_override, max_size=1)
).flatmap(lambda t: st.tuples(st.permutations(t[0] + t[1]), st.just(t[1])))


@st.composite
def train_dicts(draw) -> tuple[dict, list]:
    """A valid TrainConfig dict, or one with a bad value, a typo or unknown keys: (data, the bad keys)."""
    data = draw(st.fixed_dictionaries({"method": st.just(dict(VAE))}, optional=GOOD))
    kind = draw(st.sampled_from(["valid", "value", "typo", "junk"]))
    if kind == "valid":
        return data, []
    if kind == "value":
        keys = [draw(st.sampled_from([*GOOD, "method"]))]
    elif kind == "typo":
        keys = [draw(st.sampled_from(TYPOS))]
    else:  # YAML keys need not be strings
        junk = st.one_of(st.text(max_size=6), st.integers(-3, 3)).filter(lambda k: k not in TRAIN_KEYS)
        keys = draw(st.lists(junk, min_size=1, max_size=2, unique=True))
    for key in keys:
        data[key] = draw(yaml_values)
    return data, keys


def all_keys(data) -> set[str]:
    """Every key in a nested dict, as text and as its repr (how lists of unknown keys show them)."""
    if isinstance(data, dict):
        return {t for k in data for t in (str(k), repr(k))} | {k for v in data.values() for k in all_keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in all_keys(v)}
    return set()


def key_parts(items: list[str]) -> set[str]:
    """The dotted parts of the keys of ``key=value`` overrides."""
    return {part for item in items for part in item.split("=", 1)[0].split(".")}


def assert_typed(obj) -> None:
    """Every field of a loaded config has its declared type (ints are ints, fixed tuples have their length)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp = getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):
            assert_typed(value)
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            assert isinstance(value, tuple) and len(value) == len(args), (f.name, value)
            assert all(type(v) is a for v, a in zip(value, args)), (f.name, value)
        elif tp in (int, float, str, bool):
            assert type(value) is tp, (f.name, value)


@pytest.fixture(scope="module")
def run_script():
    spec = importlib.util.spec_from_file_location("run_script", ROOT / "training" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("configs")


@FEW
@given(case=train_dicts())
@example(case=({"method": dict(VAE), "x": 1, 0: 2}, ["x", 0]))  # unknown keys of mixed types (a TypeError once)
def test_from_dict_builds_a_typed_config_or_names_the_bad_key(case):
    data, bad_keys = case
    try:
        cfg = from_dict(TrainConfig, data)
    except ConfigError as e:
        assert any(k in str(e) for key in bad_keys for k in (str(key), repr(key))), (bad_keys, str(e))
        return
    assert isinstance(cfg.method["name"], str)
    assert_typed(cfg)


@FEW
@given(
    document=st.one_of(train_dicts().map(lambda case: yaml.safe_dump(case[0])), st.text(max_size=40)), case=overrides
)
def test_config_files_and_overrides_load_or_raise_config_error(config_dir, document, case):
    items, bad = case
    path = config_dir / "random.yaml"
    path.write_text(document)
    try:
        cfg = load_config(TrainConfig, path, items)
        resolve_method(cfg)
    except ConfigError as e:
        names = key_parts(items) | {"method", "config file"}
        if not str(e).startswith("config file"):  # the file is YAML, so its keys may be what is wrong
            names |= all_keys(yaml.safe_load(document))
        assert any(name in str(e) for name in names), str(e)
        return
    assert_typed(cfg)


@FEW
@given(case=overrides)
@example(case=(["max_steps=[1"], ["max_steps=[1"]))  # not YAML (a yaml error once)
@example(case=(["optim.lr=" + "9" * 400], ["optim.lr=" + "9" * 400]))  # too big for a float (OverflowError once)
@example(case=(["method.name=[w2svd]"], ["method.name=[w2svd]"]))  # unhashable name (TypeError once)
@example(case=(["optim.betas=[0.9]"], ["optim.betas=[0.9]"]))  # wrong length (accepted once)
def test_run_script_dry_run_exits_0_or_reports_a_config_error(run_script, case):
    """training/run.py on a shipped config with dotted overrides: 0 and the config, or 2 naming the bad key."""
    items, bad = case
    out, err = io.StringIO(), io.StringIO()
    config = ROOT / "training" / "configs" / "embedded_w2svd.yaml"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_script.main(["--config", str(config), "--dry-run", "--", *items])
    if rc == 0:
        assert yaml.safe_load(out.getvalue())["method"]["name"] == "w2svd"
        return
    message = err.getvalue()
    assert rc == 2 and bad and message.startswith("config error: "), (items, message)
    assert any(part in message for part in key_parts(bad) | {"method"}) or bad[0] in message, (items, message)
