"""Model cards (README.md with Hub front matter) for the embedded base and for distilled LoRAs."""

from __future__ import annotations

import json
from typing import Any

from w2svd.generator_meta import GeneratorMeta


def base_card(defaults: dict[str, Any], components: dict[str, str], report: dict[str, Any]) -> str:
    """Card of the embedded base pipeline; ``report`` holds measured figures (VAE PSNR, training time)."""
    d = defaults
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-video",
        "tags: [hunyuanvideo, w2svd, tiny, synthetic]",
        "---",
        "",
        "# w2svd embedded base: a tiny HunyuanVideo-architecture text-to-video model",
        "",
        "Trained from scratch by `w2svd` on its procedurally rendered talking-portrait world, so the project",
        "runs with no GPU and no network. Same diffusers classes as HunyuanVideo 13B, only smaller:",
        "",
        "| component | class | notes |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | `{v}` | {NOTES.get(k, '')} |" for k, v in components.items()]
    lines += [
        "",
        f"Native size: {d['num_frames']} frames of {d['height']}x{d['width']} at {d['fps']} fps; "
        f"{d['num_inference_steps']} Euler steps, flow shift {d['flow_shift']}, guidance {d['guidance_scale']} "
        + guidance_note(d),
        "",
        "The text encoders are **randomly initialised and frozen**: the transformer learned to read their",
        "features; they carry no language knowledge beyond the caption grammar's vocabulary.",
        "",
        "```python",
        "from diffusers import HunyuanVideoPipeline",
        "",
        'pipe = HunyuanVideoPipeline.from_pretrained("assets/embedded/base")',
        "video = pipe(",
        '    prompt="a woman with long red hair and glasses talking against a teal background",',
        f"    height={d['height']}, width={d['width']}, num_frames={d['num_frames']},",
        f"    num_inference_steps={d['num_inference_steps']}, guidance_scale={d['guidance_scale']},",
        *([f'    true_cfg_scale={cfg:g}, negative_prompt="",'] if (cfg := d.get("true_cfg_scale", 1.0)) != 1.0 else []),
        ").frames[0]",
        "```",
        "",
        "Measured when this folder was exported:",
        "",
        "```json",
        json.dumps(report, indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"


def guidance_note(d: dict[str, Any]) -> str:
    """How the base's defaults guide sampling, and what that costs in NFE."""
    cfg = d.get("true_cfg_scale", 1.0)
    if cfg == 1.0:
        return "(no guidance embedding and no CFG: NFE = steps)."
    return (
        f"(no guidance embedding), classifier-free guidance {cfg:g} against the empty prompt: two transformer calls "
        f"per step, NFE = 2 x steps = {2 * d['num_inference_steps']}. In stock diffusers that is "
        f'`true_cfg_scale={cfg:g}` with `negative_prompt=""`: without a negative prompt the stock pipeline '
        "does not guide."
    )


NOTES = {
    "transformer": "trained from scratch, rectified flow with shifted timesteps, 10% empty captions",
    "vae": "trained on portrait clips (time /4 causal, space /4)",
    "text_encoder": "random frozen Llama (the pipeline reads hidden_states[-3])",
    "text_encoder_2": "random frozen CLIP text model (pooled output)",
    "tokenizer": "byte-level BPE on the caption grammar; the template prefix is exactly 95 tokens",
    "tokenizer_2": "CLIP BPE retrained on the caption grammar",
    "scheduler": "flow-matching Euler",
}


def teacher_note(meta: GeneratorMeta) -> list[str]:
    """The classifier-free guidance the generator was distilled from: the LoRA samples without it, at 1 NFE/step."""
    cfg = meta.real_cfg_scale
    if cfg == 1.0:
        return []
    levels = meta.training.get("real_cfg_levels")  # a guidance interval: guided only at these noise levels
    where = (
        f" at the distribution-matching noise levels {levels[0]:g}-{levels[1]:g}, "
        f"{meta.training.get('real_cfg_outside_scale', 1.0):g} elsewhere"
        if levels
        else ""
    )
    return [
        f"Distilled from the base sampled with classifier-free guidance {cfg:g}{where} (the real score is guided): the",
        "LoRA needs no guidance of its own, one transformer call per step.",
    ]


def lora_card(meta: GeneratorMeta, base_repo: str, lora_repo: str, defaults: dict[str, Any]) -> str:
    """Card of a distilled LoRA with the exact stock-diffusers snippet that reproduces its sampler."""
    steps = str(meta.default_steps)
    sigmas = meta.sigmas_by_steps[steps]
    pipeline = meta.pipeline  # the base's diffusers pipeline class
    family = {"WanPipeline": "wan"}.get(pipeline, "hunyuanvideo")
    lines = [
        "---",
        f"base_model: {base_repo}",
        "library_name: diffusers",
        "pipeline_tag: text-to-video",
        f"tags: [lora, diffusers, w2svd, few-step, {family}]",
        "---",
        "",
        f"# {steps}-step {meta.method.upper()} LoRA for `{base_repo}`",
        "",
        "Weak-to-strong video distillation (W2SVD): generator LoRA trained by distribution matching against a",
        f"real score = base + {meta.training.get('alpha_weak')} x fake-score LoRA "
        f"(lambda_gt = {meta.training.get('lambda_gt')}).",
        f"Recommended: {steps} steps, sigmas {sigmas[:-1]} (already shifted: build the scheduler with shift=1),",
        f"guidance {meta.guidance_scale}, "
        + ("re-noising between steps (stochastic_sampling=True)." if meta.renoise else "deterministic Euler steps."),
        *teacher_note(meta),
        "",
        "```python",
        "import torch",
        f"from diffusers import FlowMatchEulerDiscreteScheduler, {pipeline}",
        "",
        f'pipe = {pipeline}.from_pretrained("{base_repo}")',
        f'pipe.load_lora_weights("{lora_repo}")',
        "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(",
        f"    pipe.scheduler.config, shift=1.0, stochastic_sampling={meta.renoise}",
        ")",
        "seed = 0",
        *(
            ["torch.manual_seed(seed + 1)  # the re-noising draws from the global RNG; w2svd seeds it with seed + 1"]
            if meta.renoise
            else []
        ),
        "video = pipe(",
        '    prompt="a woman with long red hair and glasses talking against a teal background",',
        f"    height={defaults['height']}, width={defaults['width']}, num_frames={defaults['num_frames']},",
        f"    sigmas={sigmas[:-1]}, num_inference_steps={steps},",
        f"    guidance_scale={meta.guidance_scale}, generator=torch.Generator().manual_seed(seed),",
        ").frames[0]",
        "```",
        "",
        "Training metadata (also in the safetensors header under `w2svd`):",
        "",
        "```json",
        json.dumps(meta.to_dict(), indent=1, sort_keys=True),
        "```",
    ]
    return "\n".join(lines) + "\n"
