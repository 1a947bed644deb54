"""Inference API: load a base (and later a distilled LoRA), generate few-step and many-step videos."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from w2svd.backbones import Backbone, Cond, backbone_for
from w2svd.generator_meta import GeneratorMeta
from w2svd.hub import EMBEDDED, resolve
from w2svd.lora import (
    LoraMismatchError,
    check_lora_fits,
    check_lora_targets,
    check_lora_values,
    lora_file,
    lora_peft_config,
)
from w2svd.sampling import SeededRenoise, get_sigmas, guided, sample_euler, sample_renoise, seeded_noise

MAX_SEED = 2**32
MAX_PROMPT_TOKENS = 256  # what the text encoder reads
MAX_PROMPT_CHARS = 2000  # checked before tokenizing: no caption needs more, and a huge one cannot tie up a worker
MAX_CFG_SCALE = 30.0  # classifier-free guidance beyond this only saturates


def check_cfg_scale(value, name: str = "cfg_scale") -> float:
    """``value`` as a classifier-free guidance scale in [1, MAX_CFG_SCALE], or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value <= MAX_CFG_SCALE:
        raise ValueError(
            f"{name}={value!r} must be a number in [1, {MAX_CFG_SCALE:g}] (1 = no classifier-free guidance)"
        )
    return float(value)


@dataclasses.dataclass
class GenerationDefaults:
    """A model's native generation settings (``generation_defaults.json`` beside model_index.json)."""

    height: int = 544
    width: int = 960
    num_frames: int = 61
    fps: int = 24
    num_inference_steps: int = 28
    guidance_scale: float = 6.0  # HunyuanVideo's embedded (distilled) guidance
    flow_shift: float = 7.0
    # classifier-free guidance against the empty prompt (diffusers' name); > 1 doubles the NFE. HunyuanVideo 13B is
    # guidance-distilled (1.0); the embedded base samples with 2.0, as the stock call with negative_prompt="" does
    true_cfg_scale: float = 1.0

    @classmethod
    def from_folder(cls, folder: Path) -> GenerationDefaults:
        """The folder's ``generation_defaults.json`` (every value checked), or the HunyuanVideo defaults."""
        path = Path(folder) / "generation_defaults.json"
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); fix or delete it") from e
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else data
            raise ValueError(f"{path}: unknown setting(s) {extra!r}; valid: {sorted(known)}")
        defaults = cls(**data)
        defaults.check(str(path))
        return defaults

    def check(self, where: str) -> None:
        """ValueError naming ``where`` and the first value a sampler could not use."""

        def whole(v, lo):
            return isinstance(v, int) and not isinstance(v, bool) and v >= lo

        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")

        rules = {
            "height": (whole(self.height, 1), "a whole number >= 1"),
            "width": (whole(self.width, 1), "a whole number >= 1"),
            "num_frames": (whole(self.num_frames, 1) and (self.num_frames - 1) % 4 == 0, "4k + 1 (1, 5, 9, ...)"),
            "fps": (whole(self.fps, 1), "a whole number >= 1"),
            "num_inference_steps": (whole(self.num_inference_steps, 1), "a whole number >= 1"),
            "guidance_scale": (number(self.guidance_scale), "a number > 0"),
            "flow_shift": (number(self.flow_shift), "a number > 0"),
        }
        for key, (ok, what) in rules.items():
            if not ok:
                raise ValueError(f"{where}: {key}={getattr(self, key)!r} must be {what}")
        check_cfg_scale(self.true_cfg_scale, f"{where}: true_cfg_scale")


@dataclasses.dataclass
class GenerationResult:
    frames: np.ndarray  # (N, F, H, W, 3) uint8
    denoise_seconds: float
    total_seconds: float
    nfe: int
    sigmas: list[float]
    latents: torch.Tensor | None = None  # (N, C, T, h, w) final latents as the transformer sees them (scaled), CPU
    cfg_scale: float = 1.0  # the classifier-free guidance it was sampled with


def load_base(name_or_path: str = "embedded", device: str | None = None, dtype: torch.dtype | None = None):
    """(pipeline, defaults) for 'embedded', a local diffusers folder, or a Hub repo id."""
    folder = resolve(name_or_path, "base")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, use_safetensors=True)  # never unpickle downloads
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, GenerationDefaults.from_folder(folder)


def canonical_base(name: str) -> str:
    """One spelling per base: 'embedded' for the shipped one, absolute paths for folders, Hub ids as they are."""
    path = Path(name).expanduser()
    if name == "embedded" or (path.exists() and path.resolve() == EMBEDDED["base"].resolve()):
        return "embedded"
    return str(path.resolve()) if path.exists() else name


ADAPTER = "w2svd"
GENERATOR_META = "w2svd_generator.json"  # metadata beside a full distilled transformer (DMD with copies)
# config entries a full generator transformer must share with the base it samples with
SHARED_CONFIG = ("in_channels", "out_channels", "patch_size", "patch_size_t", "text_embed_dim", "pooled_projection_dim")


class VideoGenerator:
    """Few-step (distilled LoRA) and many-step (base) sampling from identical initial noise per seed."""

    def __init__(self, pipe, defaults: GenerationDefaults) -> None:
        self.pipe, self.defaults = pipe, defaults
        self.backbone: Backbone = backbone_for(pipe)
        # the distilled generators' metadata by adapter name ("" for a full distilled transformer), in load order
        self.generator_metas: dict[str, GeneratorMeta] = {}
        self.generator_transformer = None  # a full distilled transformer (load_transformer); None: the LoRA(s)
        self.base_name: str | None = None  # what the base was loaded as ('embedded', a folder, a Hub id); None: unknown
        self.fuse = True  # merge the LoRA into the weights for few-step sampling (off under CPU offload)
        self._pristine: dict[str, torch.Tensor] | None = None  # the base's weights under the fused LoRA, on the CPU
        self._fused: str | None = None  # the adapter merged into the weights, if any

    @property
    def lora_meta(self) -> GeneratorMeta | None:
        """The first distilled generator's metadata (its default step count is the app's default); None if none."""
        return next(iter(self.generator_metas.values()), None)

    @classmethod
    def from_pretrained(
        cls, base: str = "embedded", lora: str | None = None, device: str | None = None, dtype=None
    ) -> VideoGenerator:
        gen = cls(*load_base(base, device, dtype))
        gen.base_name = base
        if lora:
            gen.load_lora(lora)
        return gen

    # ---- the distilled LoRA -------------------------------------------------------------------
    def load_lora(self, name_or_path: str, add: bool = False) -> GeneratorMeta:
        """Load a distilled LoRA ('embedded', folder, file or Hub id); return its w2svd metadata.

        ``add`` keeps the LoRAs loaded before (say a 4-step and a 1-step one): each step count samples with the LoRA
        trained for it, so two LoRAs may not share one.
        """
        path = lora_file(resolve(name_or_path, "lora"))
        meta = GeneratorMeta.read_lora(path)
        check_lora_fits(self.pipe.transformer, path)
        check_lora_values(path)
        check_lora_targets(self.pipe.transformer, path, lora_peft_config(path))
        self.check_base(meta, str(path))
        if add and self.generator_transformer is not None:
            raise ValueError(f"cannot add {path} to a full distilled transformer; load it without add=True")
        shared = sorted(set(meta.steps) & set(self.few_step_options)) if add else []
        if shared:
            raise ValueError(f"{path} samples {shared} steps, as a LoRA already loaded does; load one of them")
        if not add:
            self._drop_generator()
        adapter = ADAPTER if not self.generator_metas else f"{ADAPTER}_{len(self.generator_metas)}"
        self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter, use_safetensors=True)
        self.generator_metas[adapter] = meta
        return meta

    # ---- a full distilled transformer (DMD with full copies) -----------------------------------
    def load_transformer(self, folder: str | Path) -> GeneratorMeta:
        """Use a full distilled transformer (``<run>/transformer``) for few_step; the base stays for baseline."""
        folder = Path(folder)
        if (folder / "transformer" / "config.json").is_file():
            folder = folder / "transformer"
        meta_path = folder / GENERATOR_META
        if not (folder / "config.json").is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a distilled transformer folder (needs config.json and {GENERATOR_META}); "
                "pass the output_dir of a method.roles=copies run or its transformer/ subfolder"
            )
        meta = GeneratorMeta.read_json(meta_path)
        self.check_base(meta, str(folder))
        base = self.pipe.transformer
        transformer = type(base).from_pretrained(folder, dtype=base.dtype, use_safetensors=True).to(base.device).eval()
        bad = next((n for n, p in transformer.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise ValueError(f"{folder}: {bad!r} holds NaN or infinite values; re-export the distilled transformer")
        for key in SHARED_CONFIG:
            if transformer.config.get(key) != base.config.get(key):
                raise ValueError(
                    f"{folder} does not fit the base: {key}={transformer.config.get(key)} but the base has "
                    f"{base.config.get(key)}; load the base it was distilled from"
                )
        self._drop_generator()
        self.generator_transformer, self.generator_metas = transformer, {"": meta}
        return meta

    def check_base(self, meta: GeneratorMeta, where: str) -> None:
        """LoraMismatchError when the generator was distilled from another base; a warning when that is unsure.

        Certainly another base: the shipped embedded one against anything else, or two different Hub ids. A local
        folder against a Hub id or another folder may be a copy of it, so that only warns.
        """
        wanted, loaded = meta.base_model, self.base_name
        unknown = not wanted or loaded is None or wanted == "random-tiny"
        a, b = ("", "") if unknown else (canonical_base(wanted), canonical_base(loaded))
        if not unknown and a == b:
            return
        if not unknown and ("embedded" in (a, b) or not (Path(a).is_absolute() or Path(b).is_absolute())):
            raise LoraMismatchError(
                f"{where} was distilled from base {wanted!r} but the loaded base is {loaded!r}: its videos would be "
                f"wrong. Load it with base {wanted!r} (app: --base {wanted})"
            )
        warnings.warn(
            f"{where}: cannot tell whether it was distilled from this base (it names {wanted!r}, the loaded base "
            f"is {loaded!r}); check that they match",
            stacklevel=3,
        )

    # ---- fusing: the LoRA merged into the weights while few-step sampling -----------------------
    def _lora_layers(self, adapter: str) -> dict[str, torch.nn.Module]:
        """The base Linear layers under ``adapter``, by module name."""
        return {
            name: module.base_layer
            for name, module in self.pipe.transformer.named_modules()
            if hasattr(module, "base_layer") and adapter in getattr(module, "lora_A", {})
        }

    def _activate(self, adapter: str) -> None:
        """Sample with ``adapter`` alone, merged into the weights when ``fuse`` (16-38% less time per call)."""
        if self._fused == adapter:
            return
        self._unfuse_lora()  # peft would unmerge a fused LoRA itself to set adapters
        self.pipe.enable_lora()
        self.pipe.set_adapters([adapter], [1.0])
        if not self.fuse:
            return
        # The weights the merge changes are copied to the CPU first, so ``_unfuse_lora`` gives the base back bit for
        # bit (subtracting the LoRA again would drift in bf16). Costs host memory equal to those weights.
        layers = self._lora_layers(adapter)
        self._pristine = {name: layer.weight.detach().to("cpu", copy=True) for name, layer in layers.items()}
        self.pipe.transformer.fuse_lora(lora_scale=1.0, adapter_names=[adapter])
        self._fused = adapter

    def _unfuse_lora(self) -> None:
        if self._fused is None:
            return
        self.pipe.transformer.unfuse_lora()  # peft's bookkeeping; the weights come from the copies
        with torch.no_grad():
            for name, layer in self._lora_layers(self._fused).items():
                layer.weight.copy_(self._pristine[name])
        self._pristine, self._fused = None, None

    def _drop_generator(self) -> None:
        """Forget the loaded distilled generators (LoRA adapters or a full transformer)."""
        self._unfuse_lora()
        if self.generator_transformer is None:
            for adapter in self.generator_metas:
                self.pipe.delete_adapters(adapter)
        self.generator_transformer, self.generator_metas = None, {}

    @contextlib.contextmanager
    def _sampling_with(self, transformer):
        """Route the backbone's velocity through ``transformer`` for the duration of the block."""
        base, self.backbone.transformer = self.backbone.transformer, transformer
        try:
            yield
        finally:
            self.backbone.transformer = base

    @property
    def few_step_options(self) -> list[int]:
        """Every step count of the loaded distilled generator(s)."""
        return sorted(n for meta in self.generator_metas.values() for n in meta.steps)

    def few_step(self, prompts: list[str], seeds: list[int], steps: int | None = None, **kw) -> GenerationResult:
        """Sample with the distilled generator trained for ``steps`` (default: the first one's) on its sigmas."""
        if self.lora_meta is None:
            raise RuntimeError(
                "no distilled LoRA loaded: call load_lora(...) or pass lora= to from_pretrained "
                "(load_transformer(...) for a full distilled transformer)"
            )
        steps = int(steps or self.lora_meta.default_steps)
        found = [(a, m) for a, m in self.generator_metas.items() if steps in m.steps]
        if not found:
            raise ValueError(f"this distilled generator supports {self.few_step_options} steps, not {steps}")
        adapter, meta = found[0]
        guidance, renoise = float(meta.guidance_scale), meta.renoise
        sigmas = torch.tensor(meta.sigmas_by_steps[str(steps)], dtype=torch.float32)
        if self.generator_transformer is not None:
            with self._sampling_with(self.generator_transformer):
                return self.generate(prompts, seeds, sigmas=sigmas, renoise=renoise, guidance=guidance, **kw)
        self._activate(adapter)
        return self.generate(prompts, seeds, sigmas=sigmas, renoise=renoise, guidance=guidance, **kw)

    def baseline(
        self, prompts: list[str], seeds: list[int], steps: int | None = None, cfg_scale: float | None = None, **kw
    ) -> GenerationResult:
        """The base model alone (LoRA disabled), Euler at its native step count and classifier-free guidance.

        ``cfg_scale`` None takes the base's ``true_cfg_scale`` (generation_defaults.json); 1.0 turns CFG off.
        """
        cfg_scale = self.defaults.true_cfg_scale if cfg_scale is None else cfg_scale
        lora = self.lora_meta is not None and self.generator_transformer is None
        if lora:
            self._unfuse_lora()
            self.pipe.disable_lora()
        try:
            return self.generate(prompts, seeds, steps=steps, cfg_scale=cfg_scale, **kw)
        finally:
            if lora:
                self.pipe.enable_lora()

    # ---- input checks -------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> str:
        """``prompt`` with its whitespace collapsed, or ValueError; bounded before any tokenizer sees it."""
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"prompt must be text, got {type(prompt).__name__} {str(prompt)[:80]!r}")
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"prompt is {len(prompt):,} characters long; at most {MAX_PROMPT_CHARS:,} are accepted (the text "
                f"encoder reads {MAX_PROMPT_TOKENS} tokens): shorten it"
            )
        control = next(
            (i for i, c in enumerate(prompt or "") if unicodedata.category(c) == "Cc" and not c.isspace()), -1
        )
        if control >= 0:
            raise ValueError(
                f"prompt contains the control character U+{ord(prompt[control]):04X} at position {control}: remove it"
            )
        if prompt is None or not any(not c.isspace() and unicodedata.category(c) != "Cf" for c in prompt):
            raise ValueError("prompt is empty: describe the video, e.g. 'a woman with long red hair talking'")
        prompt = " ".join(prompt.split())
        ids = self.pipe.tokenizer(prompt, truncation=True, max_length=MAX_PROMPT_TOKENS + 1).input_ids
        if len(ids) > MAX_PROMPT_TOKENS:
            raise ValueError(
                f"prompt is over {MAX_PROMPT_TOKENS} tokens; the text encoder takes at most 256: shorten it"
            )
        return prompt

    @staticmethod
    def check_seed(seed: int) -> int:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < MAX_SEED:
            raise ValueError(f"seed={seed!r} must be an integer in [0, 2**32)")
        return int(seed)

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """Per-seed CPU noise, so every device and both samplers start from the same tensor."""
        d = self.defaults
        return seeded_noise(self.backbone.latent_shape(d.num_frames, d.height, d.width), seeds)

    # ---- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sigmas: torch.Tensor | None = None,
        steps: int | None = None,
        renoise: bool = False,
        guidance: float | None = None,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
        cfg_scale: float = 1.0,
    ) -> GenerationResult:
        """Sample videos; ``sigmas`` overrides ``steps`` (default: the model's native step count).

        ``guidance`` is the embedded guidance value (read only by guidance-distilled models such as HunyuanVideo
        13B). ``cfg_scale`` > 1 is classifier-free guidance against the empty prompt: two model calls per step,
        so the reported NFE doubles.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        prompts = [self.check_prompt(p) for p in prompts]
        seeds = [self.check_seed(s) for s in seeds]
        if sigmas is None:
            sigmas = get_sigmas(steps or self.defaults.num_inference_steps, self.defaults.flow_shift)
        guidance = self.defaults.guidance_scale if guidance is None else guidance
        cfg_scale = check_cfg_scale(cfg_scale)
        start = time.perf_counter()
        device = self.pipe._execution_device
        cond = self.backbone.encode_prompts(prompts)
        uncond = None
        if cfg_scale != 1.0:  # the empty prompt, encoded once for the whole batch
            uncond = Cond.cat([self.backbone.encode_prompts([""])] * len(prompts))
        noise = self.initial_noise(seeds).to(device)

        def v_cond(x, s):
            return self.backbone.velocity(x, s, cond, guidance)

        def v_uncond(x, s):
            return self.backbone.velocity(x, s, uncond, guidance)

        model_fn = guided(v_cond, None if uncond is None else v_uncond, cfg_scale)

        t0 = time.perf_counter()
        if renoise:
            lat = sample_renoise(model_fn, noise, sigmas, noise_fn=SeededRenoise(seeds), callback=callback)
        else:
            lat = sample_euler(model_fn, noise, sigmas, callback=callback)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        video = self.backbone.decode_latents(lat.to(device))
        frames = video.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
        return GenerationResult(
            frames=frames,
            denoise_seconds=t1 - t0,
            total_seconds=time.perf_counter() - start,
            nfe=(len(sigmas) - 1) * (2 if uncond is not None else 1),
            sigmas=[float(s) for s in sigmas],
            latents=lat.detach().float().cpu(),
            cfg_scale=cfg_scale,
        )
