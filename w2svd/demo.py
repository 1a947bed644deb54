"""The Gradio demo: a W2SVD few-step video next to the base model's many-step video from the same seed."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator

import gradio as gr
import numpy as np

from w2svd.app_utils import (
    SideStats,
    VideoStore,
    display_scale,
    on_zero_gpu,
    release_memory,
    spaces_gpu,
    stats_dict,
    stats_markdown,
    upscale_nearest,
)
from w2svd.pipeline import MAX_PROMPT_CHARS, MAX_SEED, GenerationResult, VideoGenerator

FALLBACK_STEPS = (2, 4, 8)  # plain Euler step counts offered when no LoRA is loaded
FALLBACK_DEFAULT_STEPS = 4
WARMUP_PROMPT = "a woman with long red hair talking"
VIDEO_HEIGHT = 400  # px on the page; the mp4 itself is the upscaled display size
CSS = "video { image-rendering: pixelated; }"  # keep the nearest-neighbour upscale crisp when resized

# The outputs of the UI handler, in order: seed used, few-step video and stats, baseline video and stats, JSON.
Outputs = tuple[int, str, str, str | None, str, dict]
MAX_UPLOAD = "1mb"  # the app takes no files; Gradio's upload route refuses anything larger


class Cancelled(Exception):
    """The request was cancelled or its client went away: sampling stops at the next step."""


def as_sent(component: gr.components.Component) -> gr.components.Component:
    """``component``, handing its value to the handler exactly as the client sent it (no str(), no rounding), so the
    handler's checks see a wrong type or a fraction instead of a silently coerced value. (An instance attribute:
    subclassing a component makes Gradio write a .pyi stub next to this module at import.)"""
    component.preprocess = lambda payload: payload
    return component


def job_alive(blocks: gr.Blocks | None, request: gr.Request | None) -> Callable[[], bool]:
    """Whether the queue still runs a live job for ``request``'s session.

    Gradio marks a job dead when its client disconnects and drops it when it is cancelled, but a synchronous
    handler already running goes on; the samplers poll this between steps instead.
    """
    session = getattr(request, "session_hash", None)
    if blocks is None or session is None or on_zero_gpu():  # ZeroGPU runs the sampler in another process
        return lambda: True

    def alive() -> bool:
        queue = getattr(blocks, "_queue", None)
        jobs = [e for batch in getattr(queue, "active_jobs", []) if batch for e in batch if e.session_hash == session]
        return any(e.alive for e in jobs)

    return alive


class DemoHandlers:
    """The app's request handlers around one VideoGenerator; plain Python, so tests call them directly."""

    def __init__(
        self,
        generator: VideoGenerator,
        videos: VideoStore,
        base_name: str,
        lora_name: str | None,
        no_lora_reason: str = "",
        display_size: int = 256,
        seconds_per_step: float = 3.0,
    ) -> None:
        self.generator, self.videos = generator, videos
        self.base_name, self.lora_name, self.no_lora_reason = base_name, lora_name, no_lora_reason
        d = generator.defaults
        self.scale = display_scale(d.height, d.width, display_size)
        self.baseline_steps = d.num_inference_steps
        self.seconds_per_step = seconds_per_step
        self._lock = threading.Lock()  # one pipeline whose adapters the two samplers switch: one job at a time
        self.blocks: gr.Blocks | None = None  # set by build_blocks: where a request's cancellation is read
        self._few_step_gpu = spaces_gpu(self._few_step, duration=self.gpu_seconds)
        self._baseline_gpu = spaces_gpu(self._baseline, duration=self.baseline_gpu_seconds)

    # ---- what is loaded -----------------------------------------------------------------------
    @property
    def baseline_cfg(self) -> float:
        """The base's classifier-free guidance (> 1: two model calls per baseline step)."""
        return self.generator.defaults.true_cfg_scale

    @property
    def has_lora(self) -> bool:
        return self.generator.lora_meta is not None

    @property
    def step_options(self) -> list[int]:
        return self.generator.few_step_options if self.has_lora else list(FALLBACK_STEPS)

    @property
    def default_steps(self) -> int:
        if not self.has_lora:
            return FALLBACK_DEFAULT_STEPS
        default = self.generator.lora_meta.default_steps
        return default if default in self.step_options else self.step_options[0]

    def step_choice(self, steps: int) -> tuple[str, int]:
        """The few-step control's entry for ``steps``: its label names the NFE, the value is the step count."""
        calls = 2 if not self.has_lora and self.baseline_cfg != 1.0 else 1  # the fallback samples as the base does
        return f"{steps} step{'s' if steps > 1 else ''} ({steps * calls} NFE)", steps

    def few_step_label(self, steps: int) -> str:
        if self.has_lora:
            return f"W2SVD - {steps} steps"
        cfg = f", CFG {self.baseline_cfg:g}" if self.baseline_cfg != 1.0 else ""
        return f"Base, Euler - {steps} steps{cfg} (no W2SVD LoRA loaded)"

    @property
    def baseline_label(self) -> str:
        cfg = f", CFG {self.baseline_cfg:g}" if self.baseline_cfg != 1.0 else ""
        return f"Base - {self.baseline_steps} steps{cfg}"

    def video_format(self) -> dict:
        d = self.generator.defaults
        return {
            "frames": d.num_frames,
            "fps": d.fps,
            "native_size": [d.height, d.width],
            "display_size": [d.height * self.scale, d.width * self.scale],
            "upscale": f"nearest x{self.scale}",
        }

    def about_markdown(self) -> str:
        """The 'What am I looking at' text, naming the loaded base and LoRA."""
        d, n = self.generator.defaults, self.baseline_steps
        if self.has_lora:
            meta = self.generator.lora_meta
            renoise = "with" if meta.renoise else "without"
            lora = (
                f"W2SVD LoRA **{self.lora_name}** (steps {self.step_options}, guidance "
                f"{meta.guidance_scale}, {renoise} re-noising between steps)."
            )
        else:
            lora = (
                f"**no W2SVD LoRA loaded** ({self.no_lora_reason}): the left video is the base model alone with "
                "plain Euler at a few steps, not W2SVD. Pass `--lora` or set `W2SVD_LORA` to compare with W2SVD."
            )
        if self.scale > 1:
            size = (
                f"native {d.width}x{d.height} px, shown and downloadable at {d.width * self.scale}x"
                f"{d.height * self.scale} px (nearest-neighbour upscale x{self.scale})"
            )
        else:
            size = f"{d.width}x{d.height} px (native size)"
        return (
            "### What am I looking at\n"
            f"**W2SVD** (Weak-to-Strong Video Distillation, MagicDistillation, arXiv 2503.13319) distills a {n}-step "
            "HunyuanVideo-family text-to-video model into a LoRA that samples in a few steps. Left: the few-step "
            f"sampler; right: the base model alone at its native {n} Euler steps{self._cfg_note()}. Both start from "
            "the same initial noise (same seed), so what differs is the sampler, not the noise.\n\n"
            f"Loaded: base **{self.base_name}**; {lora}\n\n"
            f"Videos: {d.num_frames} frames at {d.fps} fps, {size}. The benchmark table (quality and speed on "
            "held-out prompts) is in `docs/benchmark.md`."
        )

    def _cfg_note(self) -> str:
        if self.baseline_cfg == 1.0:
            return ""
        return (
            f" with classifier-free guidance {self.baseline_cfg:g} against the empty prompt (two model calls per "
            f"step: {2 * self.baseline_steps} NFE)"
        )

    # ---- input checks -------------------------------------------------------------------------
    def validate(self, prompt, seed, few_steps, run_baseline=True, randomize=False) -> tuple[str, int, int]:
        """(prompt, seed, steps) cleaned, or gr.Error saying which input is wrong and why.

        Whole numbers may come as floats (3.0, as JSON clients send them); anything that would need rounding, and
        any flag that is not a boolean, is an error naming the parameter.
        """
        for name, flag in (("run_baseline", run_baseline), ("randomize", randomize)):
            if not isinstance(flag, bool):
                raise gr.Error(f"{name}={flag!r} must be true or false", print_exception=False)
        seed, few_steps = (_whole(v) for v in (seed, few_steps))
        try:
            prompt = self.generator.check_prompt(prompt)
            seed = self.generator.check_seed(seed)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from e
        ok = isinstance(few_steps, (int, np.integer)) and not isinstance(few_steps, bool)
        if not ok or int(few_steps) not in self.step_options:
            what = "this LoRA supports" if self.has_lora else "without a LoRA the app offers"
            raise gr.Error(
                f"few_steps={few_steps!r} is not supported: {what} {self.step_options} steps", print_exception=False
            )
        return prompt, seed, int(few_steps)

    @staticmethod
    def random_seed() -> int:
        return secrets.randbelow(MAX_SEED)

    # ---- GPU work (one spaces.GPU lease per call on ZeroGPU) ------------------------------------
    def gpu_seconds(self, prompt: str, seed: int, steps: int, progress=None, alive=None) -> int:
        """The GPU lease to ask ZeroGPU for: loading and decoding overhead plus a per-call estimate."""
        guided = not self.has_lora  # the no-LoRA fallback samples as the base does
        return self._lease(steps, guided)

    def baseline_gpu_seconds(self, prompt: str, seed: int, steps: int, progress=None, alive=None) -> int:
        """As gpu_seconds, for the base's own sampler."""
        return self._lease(steps, guided=True)

    def _lease(self, steps: int, guided: bool) -> int:
        calls = 2 if guided and self.baseline_cfg != 1.0 else 1  # classifier-free guidance: two calls per step
        return int(30 + self.seconds_per_step * steps * calls)

    def _few_step(self, prompt: str, seed: int, steps: int, progress=None, alive=None) -> GenerationResult:
        callback = _progress_callback(progress, steps, self.few_step_label(steps), alive)
        if self.has_lora:
            return self.generator.few_step([prompt], [seed], steps, callback=callback)
        return self.generator.baseline([prompt], [seed], steps=steps, callback=callback)  # the base's own sampler

    def _baseline(self, prompt: str, seed: int, steps: int, progress=None, alive=None) -> GenerationResult:
        callback = _progress_callback(progress, steps, self.baseline_label, alive)
        return self.generator.baseline([prompt], [seed], steps, callback=callback)

    def warm_up(self) -> None:
        """One 1-step sample, so the first request's timings do not include one-off start-up costs."""
        with self._lock:
            self.generator.generate([WARMUP_PROMPT], [0], steps=1)

    def _video(self, result: GenerationResult, tag: str) -> str:
        frames = upscale_nearest(result.frames[0], self.scale)  # (F, H*s, W*s, 3)
        path = self.videos.write(frames, self.generator.defaults.fps, tag)
        release_memory()
        return str(path)

    # ---- handlers -----------------------------------------------------------------------------
    def stream(
        self, prompt, seed, randomize, few_steps, run_baseline, progress=gr.Progress(), request: gr.Request = None
    ) -> Iterator[Outputs]:
        """UI handler: yields the few-step video as soon as it is ready, then the baseline (same seed).

        A cancelled request (or one whose client left) stops sampling at the next step and yields nothing more.
        """
        alive = job_alive(self.blocks, request)
        try:
            yield from self._stream(prompt, seed, randomize, few_steps, run_baseline, progress, alive)
        except Cancelled:
            return

    def _stream(self, prompt, seed, randomize, few_steps, run_baseline, progress, alive) -> Iterator[Outputs]:
        prompt, seed, steps = self.validate(prompt, seed, few_steps, run_baseline, randomize)
        seed = self.random_seed() if randomize else seed
        models = {"base": self.base_name, "lora": self.lora_name if self.has_lora else None}
        waiting = f"Waiting for {self.few_step_label(steps)}..." if run_baseline else "Baseline not run."
        yield seed, None, f"Sampling {self.few_step_label(steps)}...", None, waiting, {}
        with self._lock:
            result = self._few_step_gpu(prompt, seed, steps, progress, alive)
        few, few_path = SideStats.of(self.few_step_label(steps), result), self._video(result, "few")
        stats = stats_dict(prompt, seed, few, None, self.video_format(), models)
        if not run_baseline:
            note = "Baseline not run: tick *also run the baseline* to compare and measure the speed-up."
            yield seed, few_path, stats_markdown(few), None, note, stats
            return
        yield seed, few_path, stats_markdown(few), None, f"Running the {self.baseline_steps}-step baseline...", stats
        with self._lock:
            result = self._baseline_gpu(prompt, seed, self.baseline_steps, progress, alive)
        base, base_path = SideStats.of(self.baseline_label, result), self._video(result, "base")
        stats = stats_dict(prompt, seed, few, base, self.video_format(), models)
        yield seed, few_path, stats_markdown(few, base), base_path, stats_markdown(base), stats

    def example(self, prompt, seed, randomize, few_steps, run_baseline) -> Outputs:
        """Examples handler (cached lazily by Gradio): the UI handler's final outputs."""
        *_, last = self.stream(prompt, seed, randomize, few_steps, run_baseline, progress=None)
        return last

    def api(
        self, prompt: str, seed: int, few_steps: int, run_baseline: bool, request: gr.Request = None
    ) -> tuple[str, str | None, dict]:
        """API handler (/generate): the few-step mp4, the baseline mp4 (None if not run) and the stats."""
        try:
            *_, (_, few_path, _, base_path, _, stats) = self._stream(
                prompt, seed, False, few_steps, run_baseline, None, job_alive(self.blocks, request)
            )
        except Cancelled:
            raise gr.Error("the request was cancelled", print_exception=False) from None
        return few_path, base_path, stats


def _whole(value):
    """An integral float (3.0) as an int; anything else unchanged, for the checks to accept or name."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _progress_callback(progress, total: int, desc: str, alive: Callable[[], bool] | None = None) -> Callable | None:
    """A sampler callback (step, sigma, x): advances a gr.Progress bar and raises Cancelled once ``alive()`` is
    False; None when there is neither."""
    if progress is None and alive is None:
        return None

    def callback(i: int, sigma: float, x) -> None:
        if alive is not None and not alive():
            raise Cancelled(f"cancelled after step {i + 1} of {total}")
        if progress is not None:
            progress((i + 1, total), desc=desc)

    return callback


def build_blocks(handlers: DemoHandlers, max_queue: int = 16) -> gr.Blocks:
    """The page: prompt, seed, step count, two videos side by side with stats; one GPU queue of size 1."""
    h = handlers
    with gr.Blocks(title="W2SVD: few-step text-to-video", delete_cache=(1800, 3600)) as blocks:
        gr.Markdown("# W2SVD: few-step text-to-video")
        gr.Markdown(h.about_markdown())
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(
                label="Prompt",
                max_length=MAX_PROMPT_CHARS,
                lines=1,
                max_lines=4,
                placeholder="a woman with long red hair and green eyes, no glasses, smiling against a teal background",
                scale=5,
                elem_id="prompt",
            )
            as_sent(prompt)
            button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        with gr.Row():
            seed = as_sent(gr.Number(label="Seed", value=0, precision=0, elem_id="seed"))
            randomize = gr.Checkbox(label="Randomize seed (the seed used is shown)", value=False)
            few_steps = gr.Radio(
                [h.step_choice(n) for n in h.step_options], value=h.default_steps, label="Few-step count"
            )
            run_baseline = gr.Checkbox(label=f"Also run the {h.baseline_steps}-step baseline", value=True)
        with gr.Row():
            few_video, few_stats = _video_column(h.few_step_label(h.default_steps), "few")
            base_video, base_stats = _video_column(h.baseline_label, "base")
        with gr.Accordion("Details (JSON, as the API returns them)", open=False):
            stats_json = gr.JSON(label="Stats")
        inputs = [prompt, seed, randomize, few_steps, run_baseline]
        outputs = [seed, few_video, few_stats, base_video, base_stats, stats_json]
        gr.Examples(
            # Held-out attribute combinations, never seen in training; clicking one fixes its seed.
            [[e.prompt, e.seed, False, h.default_steps, True] for e in _examples()],
            inputs=inputs,
            outputs=outputs,
            fn=h.example,
            cache_examples=True,
            cache_mode="lazy",
            visible_columns=[0, 1],
            label="Examples (held-out portraits)",
        )
        gr.on(
            [button.click, prompt.submit],
            h.stream,
            inputs=inputs,
            outputs=outputs,
            concurrency_limit=1,
            concurrency_id="gpu",
            show_progress_on=[base_video],
            api_visibility="private",
        )
        few_steps.change(
            lambda n: gr.update(label=h.few_step_label(n)), few_steps, few_video, queue=False, api_visibility="private"
        )
        _api_endpoint(h)
    blocks.queue(default_concurrency_limit=1, max_size=max_queue)
    h.blocks = blocks
    return blocks


def _video_column(label: str, tag: str) -> tuple[gr.Video, gr.Markdown]:
    """One side of the comparison: a looping, downloadable video with its stats line under it."""
    with gr.Column():
        video = gr.Video(
            label=label,
            autoplay=True,
            loop=True,
            buttons=["download"],
            interactive=False,
            height=VIDEO_HEIGHT,
            elem_id=f"{tag}_video",
        )
        return video, gr.Markdown(elem_id=f"{tag}_stats")


def _api_endpoint(h: DemoHandlers) -> None:
    """/generate: plain keyword parameters, no UI state; hidden components carry the values, as sent."""
    with gr.Column(visible=False):
        api_inputs = [
            as_sent(gr.Textbox(label="prompt")),
            as_sent(gr.Number(label="seed", value=0, precision=0)),
            as_sent(gr.Number(label="few_steps", value=h.default_steps, precision=0)),
            as_sent(gr.Checkbox(label="run_baseline", value=True)),
        ]
        api_outputs = [gr.Video(label="few-step video"), gr.Video(label="baseline video"), gr.JSON(label="stats")]
        api_button = gr.Button()
    api_button.click(h.api, api_inputs, api_outputs, api_name="generate", concurrency_limit=1, concurrency_id="gpu")


def _examples():
    from w2svd.data import heldout_examples

    return heldout_examples(6)
