"""The demo app: handlers, video files, the CLI's load errors, the /generate API and a real browser."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_fixtures import ROOT, export_tiny_lora, read_mp4, start_app, stop_app

from w2svd.app_utils import (
    LoadError,
    SideStats,
    VideoStore,
    choose_lora,
    display_scale,
    load_generator,
    stats_markdown,
    upscale_nearest,
    write_video,
)
from w2svd.demo import FALLBACK_STEPS, DemoHandlers

SCREENSHOT = ROOT / "assets" / "examples" / "app_screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "a young woman with curly red hair and green eyes, no glasses, talking against a teal background"
FRAMES, DISPLAY = 5, 256  # the tiny model: 5 frames of 32x32, shown at 256x256 (nearest x8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests share the CPU with a server process


@pytest.fixture(scope="module")
def tiny_lora_dir(tiny_pipeline_dir, tmp_path_factory) -> Path:
    return export_tiny_lora(tiny_pipeline_dir, tmp_path_factory.mktemp("tiny") / "lora")


@pytest.fixture(scope="module")
def lora_generator(tiny_pipeline_dir, tiny_lora_dir):
    return load_generator(str(tiny_pipeline_dir), str(tiny_lora_dir), "cpu")


@pytest.fixture
def handlers(lora_generator, tiny_pipeline_dir, tiny_lora_dir, tmp_path) -> DemoHandlers:
    return DemoHandlers(lora_generator, VideoStore(tmp_path / "videos"), str(tiny_pipeline_dir), str(tiny_lora_dir))


@pytest.fixture
def no_lora_handlers(tiny_pipeline_dir, tmp_path) -> DemoHandlers:
    gen = load_generator(str(tiny_pipeline_dir), None, "cpu")
    return DemoHandlers(gen, VideoStore(tmp_path / "videos"), "tiny", None, no_lora_reason="--lora none")


# ---- handlers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt, seed, steps, message",
    [
        ("", 0, 4, "prompt is empty"),
        ("   \n ", 0, 4, "prompt is empty"),
        ("word " * 300, 0, 4, "at most 256"),
        (PROMPT, -1, 4, r"seed=-1 must be an integer in \[0, 2\*\*32\)"),
        (PROMPT, 2**32, 4, r"seed=4294967296 must be an integer"),
        (PROMPT, None, 4, "seed=None"),
        (PROMPT, 0, 3, r"few_steps=3 is not supported: this LoRA supports \[2, 4\] steps"),
        (PROMPT, 0, None, "few_steps=None is not supported"),
    ],
)
def test_bad_inputs_raise_gr_error_saying_what_is_wrong(handlers, prompt, seed, steps, message):
    with pytest.raises(gr.Error, match=message):
        next(handlers.stream(prompt, seed, False, steps, True, progress=None))


def test_stream_yields_few_step_first_then_baseline_from_the_same_seed(handlers):
    calls = []
    outs = list(handlers.stream(f"  {PROMPT} ", 7, False, 4, True, progress=lambda p, desc: calls.append((p, desc))))
    assert len(outs) == 3
    seed, few_path, few_md, base_path, base_md, stats = outs[0]  # clears both videos, says what runs
    assert seed == 7 and few_path is None and base_path is None and "Sampling W2SVD - 4 steps" in few_md
    seed, few_path, few_md, base_path, base_md, stats = outs[1]
    assert seed == 7 and Path(few_path).is_file() and base_path is None
    assert "4 NFE" in few_md and "Running the 28-step baseline" in base_md
    seed, few_path2, few_md, base_path, base_md, stats = outs[2]
    assert few_path2 == few_path and Path(base_path).is_file()
    assert "faster** than the baseline" in few_md and "28 NFE" in base_md
    assert stats["prompt"] == PROMPT and stats["seed"] == 7
    assert stats["few_step"]["label"] == "W2SVD - 4 steps" and stats["few_step"]["nfe"] == 4
    assert stats["baseline"]["label"] == "Base - 28 steps" and stats["baseline"]["nfe"] == 28
    assert stats["speedup"] == pytest.approx(stats["baseline"]["seconds"] / stats["few_step"]["seconds"])
    assert stats["video"]["display_size"] == [DISPLAY, DISPLAY] and stats["video"]["upscale"] == "nearest x8"
    # Progress: one tick per step, few-step side first.
    assert [c[0] for c in calls] == [(i + 1, 4) for i in range(4)] + [(i + 1, 28) for i in range(28)]
    assert calls[0][1] == "W2SVD - 4 steps" and calls[-1][1] == "Base - 28 steps"


def test_randomize_shows_the_seed_used_and_baseline_can_be_skipped(handlers):
    outs = list(handlers.stream(PROMPT, 123, True, 2, False, progress=None))
    assert len(outs) == 2
    seed, few_path, few_md, base_path, base_md, stats = outs[1]
    assert 0 <= seed < 2**32 and stats["seed"] == seed
    assert base_path is None and stats["baseline"] is None and stats["speedup"] is None
    assert "Baseline not run" in base_md and stats["few_step"]["nfe"] == 2


def test_api_handler_is_reproducible_per_seed(handlers):
    few_a, base_a, _ = handlers.api(PROMPT, 11, 4, False)
    few_b, _, _ = handlers.api(PROMPT, 11, 4, False)
    assert base_a is None
    assert np.array_equal(np.stack(read_mp4(few_a)[0]), np.stack(read_mp4(few_b)[0]))


def test_no_lora_fallback_is_labelled_plain_euler(no_lora_handlers):
    h = no_lora_handlers
    assert h.step_options == list(FALLBACK_STEPS) and h.default_steps == 4
    assert h.few_step_label(4) == "Base, Euler - 4 steps (no W2SVD LoRA loaded)"
    about = h.about_markdown()
    assert "no W2SVD LoRA loaded" in about and "--lora none" in about and "not W2SVD" in about
    *_, (_, _, few_md, _, _, stats) = h.stream(PROMPT, 0, False, 4, True, progress=None)
    assert stats["few_step"]["label"] == "Base, Euler - 4 steps (no W2SVD LoRA loaded)"
    assert stats["few_step"]["nfe"] == 4 and stats["models"]["lora"] is None
    with pytest.raises(gr.Error, match=r"without a LoRA the app offers \[2, 4, 8\] steps"):
        h.validate(PROMPT, 0, 3)


def test_a_guided_base_is_labelled_with_its_cfg_and_counts_two_calls_per_step(
    tiny_pipeline_dir, tiny_lora_dir, tmp_path
):
    """A base whose generation_defaults ask for classifier-free guidance (as the embedded one does)."""
    gen = load_generator(str(tiny_pipeline_dir), str(tiny_lora_dir), "cpu")
    gen.defaults = dataclasses.replace(gen.defaults, true_cfg_scale=2.0)
    h = DemoHandlers(gen, VideoStore(tmp_path / "videos"), "tiny", "lora")
    assert h.baseline_label == "Base - 28 steps, CFG 2"
    assert "classifier-free guidance 2" in h.about_markdown() and "56 NFE" in h.about_markdown()
    assert h.baseline_gpu_seconds(PROMPT, 0, 28) - 30 == pytest.approx(2 * (h.gpu_seconds(PROMPT, 0, 28) - 30), abs=1)
    ticks = []
    *_, (_, _, _, _, base_md, stats) = h.stream(PROMPT, 3, False, 4, True, progress=lambda p, desc: ticks.append(p))
    assert stats["few_step"]["nfe"] == 4  # the distilled generator is not guided
    assert stats["baseline"]["steps"] == 28 and stats["baseline"]["nfe"] == 56 and "56 NFE" in base_md
    assert ticks[-1] == (28, 28)  # progress counts sampler steps, not model calls
    base_only = load_generator(str(tiny_pipeline_dir), None, "cpu")
    base_only.defaults = gen.defaults
    no_lora = DemoHandlers(base_only, h.videos, "tiny", None)
    assert no_lora.few_step_label(4) == "Base, Euler - 4 steps, CFG 2 (no W2SVD LoRA loaded)"
    *_, (_, _, _, _, _, stats) = no_lora.stream(PROMPT, 3, False, 4, False, progress=None)
    assert stats["few_step"]["steps"] == 4 and stats["few_step"]["nfe"] == 8  # the fallback samples as the base does
    assert h.step_choice(2) == ("2 steps (2 NFE)", 2) and no_lora.step_choice(4) == ("4 steps (8 NFE)", 4)
    assert h.step_choice(1) == ("1 step (1 NFE)", 1)


def test_choose_lora_defaults_to_the_embedded_lora_only_when_it_fits(monkeypatch, tmp_path):
    import w2svd.app_utils as app_utils

    monkeypatch.setitem(app_utils.EMBEDDED, "lora", tmp_path / "missing")
    lora, why = choose_lora("embedded", None)
    assert lora is None and "has not shipped yet" in why
    monkeypatch.setitem(app_utils.EMBEDDED, "lora", tmp_path)
    assert choose_lora("embedded", None) == ("embedded", "")
    assert choose_lora("org/base", None)[0] is None
    assert choose_lora("embedded", "none") == (None, "--lora / W2SVD_LORA is 'none'")
    assert choose_lora("embedded", " my/lora ") == ("my/lora", "")


def test_stats_markdown():
    few = SideStats("W2SVD - 4 steps", 4, 4, 0.5, 0.25, [1.0, 0.0], 3.5, 5.25)
    base = SideStats("Base - 28 steps", 28, 28, 2.0, 1.75, [1.0, 0.0], 2.0, 3.0)
    assert stats_markdown(base) == "**2.00 s** (1.75 s denoising) · **28 NFE** · motion 2.00, flicker 3.00"
    assert stats_markdown(few, base) == (
        "**0.50 s** (0.25 s denoising) · **4 NFE** · motion 3.50, flicker 5.25 · **4.0x faster** than the baseline "
        "(7.0x in denoising)"
    )


def test_side_stats_measure_the_videos_motion_and_flicker():
    from w2svd.eval.metrics import freeze, jitter
    from w2svd.pipeline import GenerationResult

    clips = np.random.default_rng(0).integers(0, 256, (1, 5, 16, 16, 3), dtype=np.uint8)
    still = SideStats.of("x", GenerationResult(freeze(clips), 1.0, 1.0, 4, [1.0, 0.5, 0.0]))
    shaky = SideStats.of("x", GenerationResult(jitter(clips, 2), 1.0, 1.0, 4, [1.0, 0.5, 0.0]))
    assert still.motion == still.flicker == 0.0 and shaky.motion > 10 and shaky.flicker > shaky.motion
    assert still.steps == 2


# ---- video files --------------------------------------------------------------------------------
def test_videos_are_h264_yuv420p_and_upscaled_nearest(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (FRAMES, 32, 32, 3), dtype=np.uint8)
    scale = display_scale(32, 32, DISPLAY)
    big = upscale_nearest(frames, scale)
    assert scale == 8 and big.shape == (FRAMES, DISPLAY, DISPLAY, 3)
    assert np.array_equal(big[:, ::8, ::8], frames) and np.array_equal(big[:, 7::8, 7::8], frames)
    decoded, meta = read_mp4(write_video(big, tmp_path / "a.mp4", fps=8))
    assert len(decoded) == FRAMES and decoded[0].shape == (DISPLAY, DISPLAY, 3)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    decoded, _ = read_mp4(write_video(frames[:, :31, :29], tmp_path / "odd.mp4", fps=8))  # yuv420p: even sizes
    assert decoded[0].shape == (32, 30, 3)
    assert display_scale(544, 960, DISPLAY) == 1  # large native videos are never shrunk


def test_video_store_keeps_only_the_newest_files(tmp_path):
    store = VideoStore(tmp_path, max_files=3)
    frames = np.zeros((FRAMES, 8, 8, 3), dtype=np.uint8)
    paths = [store.write(frames, 8, f"v{i}") for i in range(5)]
    assert sorted(tmp_path.glob("*.mp4")) == sorted(paths[-3:])


# ---- the command line ---------------------------------------------------------------------------
def test_app_exits_with_a_clear_message_for_a_missing_or_unreadable_model(tiny_pipeline_dir, tmp_path):
    import app

    with pytest.raises(SystemExit) as exit_info:
        app.main(["--base", str(tmp_path / "no-such-base"), "--device", "cpu"])
    message = str(exit_info.value.code)
    assert "could not load the base model" in message and "no-such-base" in message and "--base" in message

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    for lora, why in [(tmp_path / "no-such-lora", "no-such-lora"), (tmp_path / "bad", "not a readable safetensors")]:
        with pytest.raises(SystemExit) as exit_info:
            app.main(["--base", str(tiny_pipeline_dir), "--lora", str(lora), "--device", "cpu"])
        message = str(exit_info.value.code)
        assert "could not load the W2SVD LoRA" in message and why in message and "--lora" in message
    with pytest.raises(LoadError, match="--cpu-offload needs a CUDA device, not --device cpu"):
        load_generator(str(tiny_pipeline_dir), None, "cpu", cpu_offload=True)


# ---- the served app -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_pipeline_dir, tiny_lora_dir, tmp_path_factory):
    """app.py on a free port with the tiny base (via W2SVD_BASE) and the tiny LoRA (via --lora)."""
    tmp = tmp_path_factory.mktemp("app")
    env = {
        "W2SVD_BASE": str(tiny_pipeline_dir),
        "OMP_NUM_THREADS": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        "GRADIO_EXAMPLES_CACHE": str(tmp / "examples"),
        "HF_HUB_OFFLINE": "1",
    }
    proc, url = start_app(["--lora", str(tiny_lora_dir), "--device", "cpu"], env, tmp / "app.log")
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server, verbose=False, download_files=tmp_path_factory.mktemp("downloads"))


def test_api_generate_returns_two_playable_videos(client):
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["prompt", "seed", "few_steps", "run_baseline"]
    few, base, stats = client.predict(prompt=PROMPT, seed=3, few_steps=4, run_baseline=True, api_name="/generate")
    for path in (few, base):
        frames, meta = read_mp4(path)
        assert len(frames) == FRAMES and frames[0].shape == (DISPLAY, DISPLAY, 3) and meta["codec"] == "h264"
    assert stats["seed"] == 3 and stats["few_step"]["nfe"] == 4 and stats["baseline"]["nfe"] == 28
    assert stats["speedup"] > 0 and stats["models"]["lora"]


def test_api_bad_input_is_an_error_and_the_server_keeps_serving(client):
    from gradio_client.exceptions import AppError

    for bad, message in [
        ({"prompt": "  "}, "prompt is empty"),
        ({"seed": 2**32}, "must be an integer in [0, 2**32)"),
        ({"few_steps": 3}, "few_steps=3 is not supported"),
    ]:
        kwargs = {"prompt": PROMPT, "seed": 0, "few_steps": 4, "run_baseline": False, **bad}
        with pytest.raises(AppError) as error:
            client.predict(**kwargs, api_name="/generate")
        assert message in str(error.value)
    few, base, stats = client.predict(prompt=PROMPT, seed=1, few_steps=2, run_baseline=False, api_name="/generate")
    assert Path(few).is_file() and base is None and stats["few_step"]["nfe"] == 2


@pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
)
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (pip install playwright)")
def test_browser_generates_and_plays_both_videos(server, tmp_path):
    from playwright.sync_api import sync_playwright

    both_play = (
        "() => { const v = [...document.querySelectorAll('#few_video video, #base_video video')];"
        " return v.length === 2 && v.every(x => x.duration > 0 && x.videoWidth > 0); }"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server)
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#generate").click()
            page.wait_for_function(both_play, timeout=60_000)
            videos = page.evaluate(
                "[...document.querySelectorAll('#few_video video, #base_video video')]"
                ".map(v => [v.duration, v.videoWidth, v.videoHeight])"
            )
            assert [v[1:] for v in videos] == [[DISPLAY, DISPLAY]] * 2 and all(v[0] > 0 for v in videos)
            page.get_by_text("faster than the baseline").wait_for(timeout=10_000)
            assert "28 NFE" in page.locator("#base_stats").inner_text()
            save = os.environ.get("W2SVD_SAVE_SCREENSHOT") == "1"
            page.screenshot(path=str(SCREENSHOT if save else tmp_path / "app_screenshot.png"), full_page=True)
        finally:
            browser.close()


# ---- hardening (issue 18): strict API types, bounded prompts, cancellation ------------------------------------
def test_api_wrong_types_and_values_that_need_rounding_are_named(client):
    from gradio_client.exceptions import AppError

    for bad, message in [
        ({"seed": 1.5}, "seed=1.5 must be an integer"),
        ({"seed": -0.4}, "seed=-0.4 must be an integer"),
        ({"few_steps": 3.6}, "few_steps=3.6 is not supported"),
        ({"run_baseline": "false"}, "run_baseline='false' must be true or false"),
        ({"prompt": 123}, "prompt must be text, got int"),
        ({"prompt": ["a"]}, "prompt must be text, got list"),
        ({"prompt": "\x00\x00"}, "control character U+0000 at position 0"),
        ({"prompt": "\u200b\u200d\ufeff"}, "prompt is empty"),
        ({"prompt": "a" * 20_000}, "prompt is 20,000 characters long; at most 2,000"),
    ]:
        kwargs = {"prompt": PROMPT, "seed": 0, "few_steps": 4, "run_baseline": False, **bad}
        with pytest.raises(AppError) as error:
            client.predict(**kwargs, api_name="/generate")
        assert message in str(error.value), (bad, str(error.value))
    few, _, stats = client.predict(prompt=PROMPT, seed=2.0, few_steps=4.0, run_baseline=False, api_name="/generate")
    assert Path(few).is_file() and stats["seed"] == 2  # whole numbers sent as floats need no rounding


def test_a_huge_prompt_is_refused_before_the_tokenizer_sees_it(handlers, monkeypatch):
    calls = []
    tok = handlers.generator.pipe.tokenizer
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: calls.append(1))
    with pytest.raises(gr.Error, match="characters long"):
        next(handlers.stream("x" * 5_000_000, 0, False, 4, True, progress=None))
    assert calls == []


def test_a_cancelled_request_stops_sampling_and_the_next_one_starts_at_once(handlers, monkeypatch, tmp_path):
    """Cancel a /generate job during its baseline: no further model calls, and the queue is free again."""
    import time

    from app_fixtures import free_port
    from gradio_client import Client

    from w2svd.demo import build_blocks

    calls: list[float] = []
    backbone = handlers.generator.backbone
    velocity = backbone.velocity

    def slow_velocity(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(0.05)
        return velocity(*args, **kwargs)

    monkeypatch.setattr(backbone, "velocity", slow_velocity)
    blocks = build_blocks(handlers)
    port = free_port()
    blocks.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False, download_files=tmp_path)
        job = client.submit(prompt=PROMPT, seed=0, few_steps=4, run_baseline=True, api_name="/generate")
        deadline = time.monotonic() + 60
        while len(calls) < 10 and time.monotonic() < deadline:  # 4 few-step calls, then into the 28-step baseline
            time.sleep(0.01)
        job.cancel()
        time.sleep(0.5)
        stopped_at = len(calls)
        time.sleep(1.0)
        assert len(calls) == stopped_at < 4 + 28  # no model call after the cancellation took effect
        start = time.monotonic()
        few, base, _ = client.predict(prompt=PROMPT, seed=1, few_steps=2, run_baseline=False, api_name="/generate")
        assert Path(few).is_file() and base is None and time.monotonic() - start < 20
    finally:
        blocks.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-videos", "0"], "argument --max-videos: '0' must be a whole number >= 1"),
        (["--max-videos", "many"], "'many' must be a whole number >= 1"),
        (["--seconds-per-step", "-3"], "argument --seconds-per-step: '-3' must be a number > 0"),
        (["--seconds-per-step", "nan"], "'nan' must be a number > 0"),
        (["--device", "gpu0"], "argument --device: 'gpu0' is not a torch device"),
    ],
)
def test_bad_app_flags_stop_at_start_up_naming_the_flag(capsys, argv, message):
    spec = importlib.util.spec_from_file_location("app_entry", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    with pytest.raises(SystemExit):
        app.parse_args(argv)
    assert message in capsys.readouterr().err


def test_sigterm_removes_the_apps_temporary_folder(tiny_pipeline_dir, tiny_lora_dir, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env["GRADIO_TEMP_DIR"] = str(tmp_path / "gradio")
    args = ["--base", str(tiny_pipeline_dir), "--lora", str(tiny_lora_dir), "--device", "cpu"]
    proc, _ = start_app(args, env, tmp_path / "app.log")
    assert len(list(tmp.glob("w2svd-app-*"))) == 1
    stop_app(proc)  # SIGTERM
    assert proc.returncode == 128 + 15 and list(tmp.glob("w2svd-app-*")) == []
