"""Per-GPU memory estimate for planning a distillation run: weights, gradients, optimiser states, activations.

Parameter counts come from building the models on the ``meta`` device and counting (no weights are read).

Assumptions, per GPU. ``w2svd``: one frozen backbone + generator and fake-score LoRAs (rank ``--rank`` each);
``dmd-copies``: three full models, a frozen real score and trainable fake-score and generator copies. Trainable
parameters are fp32 (LoRAs upcast as with diffusers' ``cast_training_params``), AdamW keeps fp32 ``exp_avg`` and
``exp_avg_sq`` (8 B/param) for every optimiser, and gradients exist for one phase at a time (``set_to_none``).
- ``none`` (one GPU, or DDP): frozen weights bf16 (2 B); fp32 gradients, plus a same-size DDP bucket if gpus > 1.
- ``fsdp`` (FSDP2, per-parameter sharding, what the training loop applies with ``sharding: fsdp`` or
  ``training/accelerate/fsdp_8gpu.yaml``; see ``w2svd.training.sharding``): frozen weights stay bf16 and
  trainable ones fp32 in the same block, gradients only for the trained parameters. All / gpus.
- ``zero3`` (DeepSpeed ZeRO-3, bf16; for comparison only, the training loop does not run under DeepSpeed):
  per-parameter partitions; bf16 weights, fp32 gradients for trainable parameters only, fp32 master weights
  counted with the optimiser states (12 B/param). All / gpus.
- sharded runs also hold the gathered bf16 copy of the two largest blocks (current + prefetched).

Activations (batch ``--batch``; not sharded, every GPU runs its own clips) come from coefficients in bytes per token
per hidden unit fitted to training steps measured at HunyuanVideo-13B width (``training/bench_memory_13b.py``,
``docs/memory/README.md``: every measured row within 15%). The peak of a step is the larger of
- the activation peak: without checkpointing before backward (the generator's graph kept while the no-grad score
  passes run, or the fake-score phase's 1 or 2 graphs), with per-block checkpointing in backward, with the
  gradients (block inputs kept per graph, the block being recomputed, backward's working memory);
- the optimiser step: the gradients plus foreach AdamW's ``sqrt(exp_avg_sq)`` list (4 B per trained parameter).
Kept graphs: 2 when ``--lambda-gt`` > 0 (the fake-score loss on generated and ground-truth latents is
backpropagated at once), else 1. SDPA keeps no (tokens x tokens) matrix. Not counted: the CUDA context and
allocator fragmentation (budget 2-4 GiB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

GiB = 1024**3
# Bytes per token per hidden unit, fitted to training steps measured at HunyuanVideo-13B width (hidden 3072) on
# 1+1 to 4+4 block slices (training/bench_memory_13b.py --fit; docs/memory/README.md), as this project's loop
# runs them: no autocast (``mixed_precision`` wraps nothing), frozen weights bf16, LoRAs fp32 (peft upcasts
# their inputs, so the LoRA layers keep fp32 copies of them), full copies fp32 (their activations are fp32).
# Without checkpointing the peak comes before backward, no gradients yet: in the generator phase (its graph kept while
# the no-grad real- and fake-score passes run) or in the fake-score phase (its 1 or 2 graphs kept):
#     tokens x hidden x max(A + WORK_GEN, graphs x A + WORK_FAKE),  A = A_double x double_blocks + A_single x singles
ACT_LORA = (68.7, 66.6)  # (A_double, A_single) per block of one graph, frozen bf16 blocks with fp32 LoRAs
ACT_FULL = (77.0, 88.2)  # the same for the fp32 copies
WORK_GEN = {"lora": 59.5, "full": 76.4}
WORK_FAKE = {"lora": 33.3, "full": 33.5}
# With per-block checkpointing the peak is in backward, with the gradients:
#     gradients + tokens x hidden x (graphs x (KEPT x blocks + RECOMPUTE) + WORK)
# KEPT: the block inputs (bf16 hidden states for LoRA, fp32 for the copies); RECOMPUTE: the block being recomputed,
# per graph; WORK: backward's working memory (LoRA: the upper envelope of the measured rows, none under-planned;
# least squares would give 30.5 / 31.0 and under-plan the 1+1 slices by 5 B). For the copies, the backward peak of
# a slice is their gradients (at the end of backward), which hides the rest: RECOMPUTE is one single-stream block's
# activations (ACT_FULL) and WORK the score passes' (WORK_GEN), an upper bound that the measured forward peaks with
# checkpointing stay under.
CKPT_KEPT = {"lora": 2.0, "full": 4.0}
CKPT_RECOMPUTE = {"lora": 30.5, "full": 88.2}
CKPT_WORK = {"lora": 36.3, "full": 76.4}
ADAM_TEMP = 4.0  # bytes per trained parameter: foreach AdamW's sqrt(exp_avg_sq) list (its default on CUDA)
METHODS = ("w2svd", "dmd-copies")
SHARDING = ("fsdp", "zero3", "none")

# diffusers' HunyuanVideoTransformer3DModel defaults are the 13B model: 24 x 128 = 3072 hidden, 20 + 40 blocks.
HUNYUANVIDEO = {
    "transformer": {},
    "vae": {"spatial": 8, "temporal": 4},
    "text_tokens": 256,
    # Llava-Llama-3-8B text tower (LlamaModel) and CLIP-L text model, as in hunyuanvideo-community/HunyuanVideo.
    "llama": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128320,
    },
    "clip": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "vocab_size": 49408,
    },
}


@dataclasses.dataclass
class ModelCounts:
    """Parameter counts of one backbone, from a meta-device build."""

    transformer: int
    lora_per_rank: int  # sum of (in + out) over the LoRA-targeted linears: LoRA params = rank x this
    lora_modules: int
    largest_block: int  # parameters of the largest double/single block (the FSDP wrap unit)
    block_params: int  # parameters of all double/single blocks
    hidden: int
    double_blocks: int
    single_blocks: int
    patch: tuple[int, int]  # (temporal, spatial)
    latent_channels: int
    encoders: int  # VAE + text encoders
    untrained: int = 0  # parameters that never get a gradient (only in cut-down slices, see count_transformer)


@dataclasses.dataclass
class Estimate:
    """Per-GPU bytes of each part, and the settings that produced them."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    temporaries: float  # the optimiser step's (after backward, when the activations are freed)
    with_gradients: bool  # the activation peak comes with the gradients (in backward: checkpointing) or before them
    encoders: float  # VAE + text encoders if kept resident, else 0
    tokens: int
    notes: dict[str, str]

    @property
    def total(self) -> float:
        """The peak: static parts + the larger of the activation peak and the optimiser step (gradients +
        temporaries)."""
        activation_peak = self.activations + (self.gradients if self.with_gradients else 0.0)
        step = self.gradients + self.temporaries
        return self.weights + self.optimizer + max(activation_peak, step) + self.encoders


def _n(params: float) -> str:
    return f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_transformer(config: dict[str, Any]) -> ModelCounts:
    """Build ``HunyuanVideoTransformer3DModel(**config)`` on the meta device and count its parameters."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import HunyuanVideoTransformer3DModel

    from w2svd.backbones.hunyuan import HunyuanVideoBackbone

    with init_empty_weights():
        model = HunyuanVideoTransformer3DModel.from_config(config)
    target = re.compile(HunyuanVideoBackbone.lora_target_regex)
    linears = [
        m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and target.fullmatch(n)
    ]  # peft matches a string target_modules with re.fullmatch on the module name
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    c = model.config
    # parameters whose output feeds nothing in a cut-down slice (never in the 13B model): no gradient, no AdamW state.
    # No refiner layers: the refiner's timestep/text embedders; no single-stream blocks: the last double-stream
    # block's text-stream output (its attention output projection and feed-forward).
    untrained = _count(model.context_embedder.time_text_embed) if c.num_refiner_layers == 0 else 0
    if c.num_single_layers == 0 and c.num_layers > 0:
        last = model.transformer_blocks[-1]
        untrained += _count(last.ff_context) + _count(last.attn.to_add_out)
    return ModelCounts(
        transformer=_count(model),
        lora_per_rank=sum(m.in_features + m.out_features for m in linears),
        lora_modules=len(linears),
        largest_block=max((_count(b) for b in blocks), default=0),
        block_params=sum(_count(b) for b in blocks),
        hidden=c.num_attention_heads * c.attention_head_dim,
        double_blocks=c.num_layers,
        single_blocks=c.num_single_layers,
        patch=(c.patch_size_t, c.patch_size),
        latent_channels=c.in_channels,
        encoders=0,
        untrained=untrained,
    )


def _count_encoders_from_configs(llama: dict, clip: dict) -> int:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    with init_empty_weights():
        models = [LlamaModel(LlamaConfig(**llama)), CLIPTextModel(CLIPTextConfig(**clip)), AutoencoderKLHunyuanVideo()]
    return sum(_count(m) for m in models)


def _count_encoders_from_folder(folder: Path) -> int:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import AutoConfig, AutoModel

    total = 0
    with init_empty_weights():
        for sub in ("text_encoder", "text_encoder_2"):
            if (folder / sub / "config.json").is_file():
                total += _count(AutoModel.from_config(AutoConfig.from_pretrained(folder / sub)))
        if (folder / "vae" / "config.json").is_file():
            total += _count(
                AutoencoderKLHunyuanVideo.from_config(AutoencoderKLHunyuanVideo.load_config(folder / "vae"))
            )
    return total


def load_spec(base: str) -> tuple[ModelCounts, dict[str, Any]]:
    """Counts and VAE/text settings for 'hunyuanvideo', 'embedded' or a pipeline (or transformer) folder."""
    if base == "hunyuanvideo":
        counts = count_transformer(HUNYUANVIDEO["transformer"])
        counts.encoders = _count_encoders_from_configs(HUNYUANVIDEO["llama"], HUNYUANVIDEO["clip"])
        return counts, {"vae": HUNYUANVIDEO["vae"], "text_tokens": HUNYUANVIDEO["text_tokens"], "name": base}
    from w2svd.hub import resolve

    folder = resolve(base, "base") if base == "embedded" else Path(base)
    config_path = folder / "transformer" / "config.json"
    if not config_path.is_file():
        config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"--base {base!r}: no transformer config at {folder}/transformer/config.json or {folder}/config.json; "
            "pass 'hunyuanvideo', 'embedded', or a diffusers pipeline folder"
        )
    counts = count_transformer(json.loads(config_path.read_text()))
    vae = {"spatial": 8, "temporal": 4}
    vae_path = folder / "vae" / "config.json"
    if vae_path.is_file():
        v = json.loads(vae_path.read_text())
        vae = {"spatial": v.get("spatial_compression_ratio", 8), "temporal": v.get("temporal_compression_ratio", 4)}
    counts.encoders = _count_encoders_from_folder(folder)
    return counts, {"vae": vae, "text_tokens": HUNYUANVIDEO["text_tokens"], "name": str(base)}


def tokens_per_clip(counts: ModelCounts, vae: dict, frames: int, height: int, width: int, text_tokens: int) -> int:
    """Video tokens after the VAE and the patch embedding, plus the text tokens of the joint sequence."""
    pt, ps = counts.patch
    s, t = vae["spatial"], vae["temporal"]
    if (frames - 1) % t or height % (s * ps) or width % (s * ps):
        raise ValueError(
            f"{frames}x{height}x{width} does not fit the VAE/patch grid: frames must be {t}k+1 and height/width "
            f"multiples of {s * ps} (e.g. 61x544x960)"
        )
    latent_frames = (frames - 1) // t + 1
    return (latent_frames // pt) * (height // s // ps) * (width // s // ps) + text_tokens


def estimate(
    counts: ModelCounts,
    tokens: int,
    method: str = "w2svd",
    gpus: int = 8,
    batch: int = 1,
    rank: int = 64,
    sharding: str = "fsdp",
    grad_checkpointing: bool = False,
    keep_encoders: bool = False,
    lambda_gt: float = 0.5,
) -> Estimate:
    """Per-GPU bytes under the assumptions in this module's docstring."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {METHODS}")
    if sharding not in SHARDING:
        raise ValueError(f"sharding={sharding!r} must be one of {SHARDING}")
    if gpus < 1 or batch < 1 or rank < 1:
        raise ValueError(f"gpus={gpus}, batch={batch}, rank={rank} must all be >= 1")
    n = gpus if sharding != "none" else 1
    gather = 2 * 2 * counts.largest_block if sharding != "none" else 0  # two bf16 blocks gathered at once
    frozen = counts.transformer  # the backbone (w2svd) or the real score (dmd-copies)
    if method == "w2svd":  # generator + fake-score LoRAs; fake phase keeps generated and ground-truth graphs
        lora = rank * counts.lora_per_rank
        trainable, trained, trained_at_once, kind = 2 * lora, 2 * lora, lora, "lora"
    else:  # full generator and fake-score copies (parameters that get no gradient get no AdamW state)
        trainable, trained_at_once = 2 * counts.transformer, counts.transformer - counts.untrained
        trained, kind = 2 * trained_at_once, "full"
    act = ACT_LORA if kind == "lora" else ACT_FULL
    weights, grads, optim = 2 * frozen + 4 * trainable, 4 * trained_at_once, 8 * trained
    temporaries = ADAM_TEMP * trained_at_once
    layout = f"frozen {_n(frozen)} bf16 + trainable {_n(trainable)} fp32"
    grad_note = f"fp32 for {_n(trained_at_once)} trainable params"
    optim_note = f"AdamW fp32 exp_avg + exp_avg_sq for {_n(trained)} params"
    if sharding == "none" and gpus > 1:
        grads, grad_note = 2 * grads, grad_note + " + DDP bucket copy"
    if sharding == "zero3":
        weights, layout = 2 * (frozen + trainable), f"frozen {_n(frozen)} + trainable {_n(trainable)}, all bf16"
        optim, optim_note = 12 * trained, f"fp32 master + AdamW exp_avg + exp_avg_sq for {_n(trained)} params"
    if n > 1:
        layout += f", / {n} GPUs + gather 2 x {_n(counts.largest_block)} bf16"
        grad_note, optim_note = grad_note + f", / {n}", optim_note + f", / {n}"
    graphs = 2 if lambda_gt > 0 else 1
    blocks = counts.double_blocks + counts.single_blocks
    if grad_checkpointing:
        per_token = graphs * (CKPT_KEPT[kind] * blocks + CKPT_RECOMPUTE[kind]) + CKPT_WORK[kind]
        kept, recompute, work = CKPT_KEPT[kind], CKPT_RECOMPUTE[kind], CKPT_WORK[kind]
        formula = f"({graphs} x ({kept:g} x {blocks} blocks + {recompute:g}) + {work:g})"
    else:
        per_graph = act[0] * counts.double_blocks + act[1] * counts.single_blocks
        per_token = max(per_graph + WORK_GEN[kind], graphs * per_graph + WORK_FAKE[kind])
        formula = (
            f"max(A + {WORK_GEN[kind]:g}, {graphs} x A + {WORK_FAKE[kind]:g}), "
            f"A = {act[0]:g} x {counts.double_blocks} + {act[1]:g} x {counts.single_blocks}"
        )
    activations = batch * tokens * counts.hidden * per_token
    notes = {
        "weights": layout,
        "gradients": grad_note,
        "optimizer": optim_note,
        "activations": f"{batch} clip(s) x {tokens} tokens x {counts.hidden} hidden x {formula} B"
        + (" (checkpointed)" if grad_checkpointing else ""),
        "temporaries": f"foreach AdamW: {ADAM_TEMP:g} B x {_n(trained_at_once)} params"
        + (f" / {n}" if n > 1 else "")
        + "; not at once with the activations (the larger of the two counts)",
    }
    return Estimate(
        weights=weights / n + gather,
        gradients=grads / n,
        optimizer=optim / n,
        activations=activations,
        temporaries=temporaries / n,
        with_gradients=grad_checkpointing,
        encoders=2 * counts.encoders if keep_encoders else 0.0,
        tokens=tokens,
        notes=notes,
    )


def format_report(est: Estimate, counts: ModelCounts, header: str, gpu_memory_gib: float) -> str:
    lines = [
        header,
        f"transformer {counts.transformer / 1e9:.3f} B params (meta-device build); LoRA targets: "
        f"{counts.lora_modules} linears, {counts.lora_per_rank / 1e6:.2f} M params per unit of rank",
        "per GPU:",
    ]
    for name in ("weights", "gradients", "optimizer", "activations", "temporaries"):
        label = {"optimizer": "optimiser states", "temporaries": "step temporaries"}.get(name, name)
        lines.append(f"  {label:<17} {getattr(est, name) / GiB:9.2f} GiB  {est.notes[name]}")
    enc = f"{2 * counts.encoders / GiB:.2f} GiB bf16"
    if est.encoders:
        lines.append(f"  {'encoders':<17} {est.encoders / GiB:9.2f} GiB  VAE + text encoders resident, replicated")
    else:
        lines.append(f"  {'encoders':<17} {0.0:9.2f} GiB  not counted ({enc}; needed by prepare.py only)")
    lines.append(f"  {'total':<17} {est.total / GiB:9.2f} GiB  (+ CUDA context and fragmentation, ~2-4 GiB)")
    verdict = "fits" if est.total / GiB <= gpu_memory_gib - 4 else "does NOT fit"
    lines.append(f"{verdict} in {gpu_memory_gib:g} GiB per GPU, keeping 4 GiB for the CUDA context")
    return "\n".join(lines)


HUNYUANVIDEO_IDS = ("hunyuanvideo", "hunyuanvideo-community/HunyuanVideo")


def plan_for_config(cfg, method_cfg, gpus: int = 1, gpu_memory_gib: float = 80.0) -> str:
    """The per-GPU estimate of a distillation run's config (``training/run.py --dry-run``), as a report."""
    base = "hunyuanvideo" if method_cfg.base in HUNYUANVIDEO_IDS else method_cfg.base
    counts, spec = load_spec(base)
    h, w = cfg.data.hw
    tokens = tokens_per_clip(counts, spec["vae"], cfg.data.num_frames, h, w, spec["text_tokens"])
    method = "dmd-copies" if method_cfg.roles == "copies" else "w2svd"
    sharding = "fsdp" if gpus > 1 or cfg.sharding == "fsdp" else "none"
    batch = max(1, cfg.batch_size // gpus)
    est = estimate(
        counts, tokens, method, gpus, batch, method_cfg.generator_rank, sharding,
        method_cfg.gradient_checkpointing, False, method_cfg.lambda_gt,
    )  # fmt: skip
    header = (
        f"memory plan (w2svd.memory, fitted to measured steps) for {spec['name']}: {method}, {gpus} GPU(s) "
        f"({sharding}), "
        f"{cfg.data.num_frames}x{h}x{w}, {batch} clip(s)/GPU, rank {method_cfg.generator_rank}, lambda_gt "
        f"{method_cfg.lambda_gt:g}, checkpointing {'on' if method_cfg.gradient_checkpointing else 'off'}, "
        f"{tokens} tokens/clip"
    )
    return format_report(est, counts, header, gpu_memory_gib)


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resolution {text!r} must look like HEIGHTxWIDTH, e.g. 544x960") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Per-GPU memory estimate of a w2svd / DMD distillation run.")
    ap.add_argument("--base", default="hunyuanvideo", help="'hunyuanvideo', 'embedded', or a pipeline folder")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--method", choices=METHODS, default="w2svd")
    ap.add_argument("--resolution", type=_resolution, default=(544, 960), help="HEIGHTxWIDTH in pixels")
    ap.add_argument("--frames", type=int, default=61)
    ap.add_argument("--batch", type=int, default=1, help="clips per GPU")
    ap.add_argument("--rank", type=int, default=64, help="LoRA rank of each adapter (w2svd)")
    ap.add_argument("--sharding", choices=SHARDING, default="fsdp")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--text-tokens", type=int, default=None, help="text tokens per clip (default 256)")
    ap.add_argument("--keep-encoders", action="store_true", help="count VAE + text encoders as resident")
    ap.add_argument("--lambda-gt", type=float, default=0.5, help="fake-score ground-truth loss weight (0: DMD)")
    ap.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU for the fits/does-not-fit line")
    args = ap.parse_args(argv)
    try:
        counts, spec = load_spec(args.base)
        h, w = args.resolution
        text = args.text_tokens if args.text_tokens is not None else spec["text_tokens"]
        tokens = tokens_per_clip(counts, spec["vae"], args.frames, h, w, text)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    est = estimate(
        counts,
        tokens,
        args.method,
        args.gpus,
        args.batch,
        args.rank,
        args.sharding,
        args.grad_checkpointing,
        args.keep_encoders,
        args.lambda_gt,
    )
    header = (
        f"{spec['name']}: method {args.method}, {args.gpus} GPU(s), sharding {args.sharding}, "
        f"{args.frames}x{h}x{w}, batch {args.batch}/GPU, rank {args.rank}, "
        f"lambda_gt {args.lambda_gt:g}, grad checkpointing {'on' if args.grad_checkpointing else 'off'}, "
        f"{tokens} tokens/clip ({text} text)"
    )
    print(format_report(est, counts, header, args.gpu_memory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
