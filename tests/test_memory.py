"""Memory estimator: counts against real tensors of a tiny transformer, activation formula, method/sharding order."""

import json

import pytest
import torch
from conftest import TINY_TRANSFORMER, TINY_VAE

from w2svd.backbones.hunyuan import HunyuanVideoBackbone
from w2svd.memory import ACT_LORA, count_transformer, estimate, load_spec, main, tokens_per_clip
from w2svd.memtrack import storage_bytes

RANK = 4


def tiny_two_lora_transformer(config: dict):
    """The W2SVD layout: frozen bf16 backbone, generator and fake-score LoRAs upcast to fp32."""
    from diffusers import HunyuanVideoTransformer3DModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(**config).to(torch.bfloat16)
    model.requires_grad_(False)
    for name in ("generator", "fake_score"):
        lora = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=HunyuanVideoBackbone.lora_target_regex)
        model.add_adapter(lora, adapter_name=name)
    model.requires_grad_(False)
    for n, p in model.named_parameters():
        p.requires_grad_(".generator." in n or ".fake_score." in n)
    cast_training_params(model, dtype=torch.float32)
    return model


def forward(model, config: dict, hw: int = 8, text: int = 6):
    x = torch.randn(1, config["in_channels"], 2, hw, hw, dtype=torch.bfloat16)
    embeds = torch.randn(1, text, config["text_embed_dim"], dtype=torch.bfloat16)
    pooled = torch.randn(1, config["pooled_projection_dim"], dtype=torch.bfloat16)
    mask = torch.ones(1, text, dtype=torch.long)
    out = model(x, torch.tensor([500.0]), embeds, mask, pooled, return_dict=False)[0]  # no autocast, as the loop
    return out.float().pow(2).mean(), 2 * (hw // 2) ** 2 + text


def test_weights_grads_and_optimiser_states_match_allocated_bytes():
    model = tiny_two_lora_transformer(TINY_TRANSFORMER)
    optimizers = {}
    for phase in ("fake_score", "generator"):  # one loop step: fake-score update, then a generator update
        params = [p for n, p in model.named_parameters() if f".{phase}." in n]
        optimizers[phase] = torch.optim.AdamW(params, lr=1e-3)
        model.set_adapters([phase])
        for p in params:
            p.requires_grad_(True)
        loss, tokens = forward(model, TINY_TRANSFORMER)
        loss.backward()
        optimizers[phase].step()
        if phase == "fake_score":
            optimizers[phase].zero_grad(set_to_none=True)
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    states = [t for o in optimizers.values() for s in o.state.values() for t in s.values() if t.dim() > 0]
    actual = storage_bytes(params) + storage_bytes(grads) + storage_bytes(states)
    est = estimate(count_transformer(TINY_TRANSFORMER), tokens, "w2svd", gpus=1, rank=RANK, sharding="none")
    predicted = est.weights + est.gradients + est.optimizer
    assert abs(predicted - actual) / actual < 0.2, (predicted, actual)
    assert est.gradients == storage_bytes(grads)  # exactly one adapter's fp32 gradients at a time


def test_activation_formula_matches_saved_tensors():
    config = {
        **TINY_TRANSFORMER,
        "num_attention_heads": 2,
        "attention_head_dim": 32,
        "rope_axes_dim": [8, 12, 12],
        "num_layers": 2,
        "num_single_layers": 2,
        "mlp_ratio": 4.0,
    }
    model = tiny_two_lora_transformer(config)
    model.set_adapters(["generator"])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, tokens = forward(model, config, hw=16, text=8)
    counts = count_transformer(config)
    per_graph = tokens * counts.hidden * (ACT_LORA[0] * 2 + ACT_LORA[1] * 2)
    assert abs(per_graph - sum(saved.values())) / sum(saved.values()) < 0.25, (per_graph, sum(saved.values()))


def test_dmd_copies_cost_more_and_sharding_divides():
    counts = count_transformer({})  # diffusers' defaults: the 13B HunyuanVideo transformer
    assert 12e9 < counts.transformer < 14e9 and counts.hidden == 3072
    assert counts.double_blocks == 20 and counts.single_blocks == 40
    tokens = tokens_per_clip(counts, {"spatial": 8, "temporal": 4}, 61, 544, 960, 256)
    assert tokens == 16 * 34 * 60 + 256

    def est(**kw):
        args = {"counts": counts, "tokens": tokens, "gpus": 8, "rank": 64, "grad_checkpointing": True, **kw}
        return estimate(**args)

    w2svd, dmd = est(method="w2svd"), est(method="dmd-copies")
    assert dmd.total > w2svd.total and dmd.weights > w2svd.weights and dmd.optimizer > w2svd.optimizer
    for method in ("w2svd", "dmd-copies"):
        for sharding in ("fsdp", "zero3"):
            more, fewer = est(method=method, sharding=sharding), est(method=method, sharding=sharding, gpus=2)
            for part in ("weights", "gradients", "optimizer"):
                assert getattr(more, part) < getattr(fewer, part)
            assert more.activations == fewer.activations
        assert est(method=method).total < est(method=method, sharding="none").total
    assert est(grad_checkpointing=False).activations > 5 * est().activations


def test_cli_for_a_pipeline_folder_and_bad_sizes(tmp_path, capsys):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(TINY_TRANSFORMER))
    (tmp_path / "vae" / "config.json").write_text(json.dumps(TINY_VAE))
    counts, spec = load_spec(str(tmp_path))
    assert spec["vae"] == {"spatial": 4, "temporal": 4} and counts.transformer > 0
    args = ["--base", str(tmp_path), "--gpus", "1", "--resolution", "32x32", "--frames", "5", "--sharding", "none"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for label in ("weights", "gradients", "optimiser states", "activations", "total"):
        assert f"  {label}" in out
    assert main(["--base", str(tmp_path), "--resolution", "30x32", "--frames", "5"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no transformer config"):
        load_spec(str(tmp_path / "transformer" / "missing"))


def test_dry_run_prints_the_memory_plan_of_the_13b_config(capsys):
    """The full-scale config's --dry-run ends with the planner's per-GPU figures for exactly that config."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("run_script", root / "training" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    config = root / "training" / "configs" / "hunyuanvideo_w2svd.yaml"
    assert run.main(["--config", str(config), "--dry-run", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    plan = "memory plan (w2svd.memory, fitted to measured steps) for hunyuanvideo: w2svd, 8 GPU(s) (fsdp), 61x544x960"
    assert plan in out
    assert main(["--base", "hunyuanvideo", "--gpus", "8", "--resolution", "544x960", "--frames", "61", "--rank",
                 "64", "--grad-checkpointing", "--lambda-gt", "0.5"]) == 0  # fmt: skip
    planner = capsys.readouterr().out
    total = next(line for line in planner.splitlines() if line.strip().startswith("total"))
    assert total in out  # the same figure as the planner's own command line
