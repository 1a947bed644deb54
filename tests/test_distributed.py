"""Data-parallel training: N processes with B / N rows each train the same adapters as one process with B."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from tiny_config import tiny_cfg

from w2svd import trainer as loop
from w2svd.config import ConfigError
from w2svd.losses import SampleNoise
from w2svd.methods.distill import FAKE, GENERATOR
from w2svd.training.checkpoint import list_checkpoints

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training/configs/tiny_w2svd.yaml"

# One rank of a launched run: train, then dump this rank's trained tensors (a test-only view of rank != 0).
WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from safetensors.torch import save_file
    from w2svd.config import load_config
    from w2svd import trainer as loop
    from w2svd.training import sharding
    from w2svd.training.config import TrainConfig

    def dump(method):  # gathering shards is collective: under fsdp it runs in the export, where all processes are
        state = {k: v.contiguous() for k, v in sharding.gather(method.trainable_state()).items()}
        save_file(state, os.path.join(cfg.output_dir, f"trainable-rank{os.environ['RANK']}.safetensors"))
        params = list(method.transformer.parameters())
        local = sum(p.to_local().numel() if sharding.is_sharded(p) else p.numel() for p in params)
        report = {"sharded": sum(sharding.is_sharded(p) for p in params), "params": len(params), "local_numel": local}
        report["dtypes"] = sorted({str(p.dtype) for p in params})
        with open(os.path.join(cfg.output_dir, f"params-rank{os.environ['RANK']}.json"), "w") as f:
            json.dump(report, f)
        dumped.append(True)

    def build(cfg, device):
        method = build_method(cfg, device)
        export = method.export
        method.export = lambda out, **kw: (dump(method) if kw else None, export(out, **kw))
        built.append(method)
        return method

    built, dumped, build_method = [], [], loop.build_method
    loop.build_method = build
    loop.BUCKET_NUMEL = 1000  # several all-reduce buckets per phase
    cfg = load_config(TrainConfig, sys.argv[2], sys.argv[3:])
    loop.train(cfg, progress=False)
    if not dumped:
        dump(built[0])
    """
)


def test_shard_for_splits_the_global_batch_and_needs_a_multiple():
    assert [loop.shard_for(8, 4, i) for i in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert loop.shard_for(3, 1, 0) == slice(0, 3)
    with pytest.raises(ConfigError, match="batch_size=6 is the global batch .* processes \\(4\\)"):
        loop.shard_for(6, 4, 1)


def test_sample_noise_depends_on_the_row_not_on_who_draws_it():
    x = torch.zeros(4, 3, 2)
    whole = SampleNoise(0, 5, range(4), torch.device("cpu")).stream("a")
    parts = [SampleNoise(0, 5, rows, torch.device("cpu")).stream("a") for rows in (range(0, 2), range(2, 4))]
    assert torch.equal(whole.randn_like(x), torch.cat([p.randn_like(x[:2]) for p in parts]))
    assert torch.equal(whole.rand(4, x.device), torch.cat([p.rand(2, x.device) for p in parts]))
    other = SampleNoise(0, 5, range(4), torch.device("cpu"))
    assert not torch.equal(other.stream("a").randn_like(x), other.stream("b").randn_like(x))
    assert not torch.equal(other.stream("a").randn_like(x), SampleNoise(0, 6, range(4), x.device).randn_like(x))


def test_step_batch_rows_are_rows_of_the_global_batch():
    from w2svd.data import PortraitDataset, step_batch

    ds = PortraitDataset("train", num_frames=5, size=32)
    whole = step_batch(ds, 0, 7, 4)
    part = step_batch(ds, 0, 7, 4, slice(2, 4))
    assert torch.equal(part["video"], whole["video"][2:]) and part["prompt"] == whole["prompt"][2:]


def test_shards_give_the_global_batch_loss_and_gradient(tmp_path):
    """Two half batches: the same rows and text, and mean loss / mean gradient equal to the whole batch's."""
    method = loop.build_method(tiny_cfg(tmp_path, batch_size=4), torch.device("cpu"))
    with torch.no_grad():  # a non-zero generator LoRA, so every parameter gets a gradient
        for p in method.params[GENERATOR]:
            p.normal_(0, 0.1)
    halves = [slice(0, 2), slice(2, 4)]

    def run(shard, phase):
        method.shard = shard
        batch = method.batch(1)
        method.arm(phase)
        loss, _ = method.loss(phase, batch)
        loss.backward()
        grads = [p.grad.clone() for p in method.params[phase]]
        for p in method.params[phase]:
            p.grad = None
        return batch, loss.detach(), grads

    for phase in (FAKE, GENERATOR):
        whole, loss, grads = run(slice(None), phase)
        parts = [run(h, phase) for h in halves]
        assert torch.equal(whole["x0_real"], torch.cat([b["x0_real"] for b, _, _ in parts]))
        for field in ("embeds", "mask", "pooled"):
            halves_field = [getattr(b["cond"], field) for b, _, _ in parts]
            assert torch.equal(getattr(whole["cond"], field), torch.cat(halves_field)), field
        assert torch.allclose(loss, (parts[0][1] + parts[1][1]) / 2, atol=1e-6), phase
        for g, g0, g1 in zip(grads, parts[0][2], parts[1][2]):
            assert torch.allclose(g, (g0 + g1) / 2, atol=1e-6), phase


def launch(worker: str, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, worker, str(ROOT), str(CONFIG), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def exported(run_dir, roles: str) -> dict[str, torch.Tensor]:
    """The exported generator as trainable-state names: LoRA tensors (lora) or the whole transformer (copies)."""
    if roles == "copies":
        weights = load_file(run_dir / "transformer" / "diffusion_pytorch_model.safetensors")
        return {f"{GENERATOR}.{k}": v for k, v in weights.items()}
    weights = load_file(run_dir / "pytorch_lora_weights.safetensors")
    out = {}
    for k, v in weights.items():  # transformer.<module>.lora_A.weight -> <module>.lora_A.generator.weight
        module, kind, leaf = k.removeprefix("transformer.").rsplit(".", 2)
        out[f"{module}.{kind}.{GENERATOR}.{leaf}"] = v
    return out


@pytest.mark.parametrize(
    "mode,roles,dtype",
    [
        ("none", "lora", "float32"),
        ("fsdp", "lora", "float32"),
        ("fsdp", "copies", "float32"),
        ("fsdp", "lora", "bfloat16"),
    ],
)
def test_two_processes_train_the_same_adapters_as_one(tmp_path, monkeypatch, mode, roles, dtype):
    """torchrun, 2 CPU processes (gloo), global batch 2: ranks agree exactly and match a 1-process run.

    ``fsdp``: the transformers (frozen weights and LoRAs, or the teacher and both trained copies) are sharded
    over the two processes (FSDP2); checkpoints, validation and the export still hold full tensors, and
    a sharded run resumes from its checkpoint as a 1-process run does. ``bfloat16``: the 13B layout, a bf16
    frozen backbone and fp32 LoRAs sharded in the same units (matched to 2e-3: bf16 rounding differs
    between batches of 1 and 2).

    optim.eps=1e-5: Adam's g / (sqrt(v) + eps) turns rounding differences in near-zero gradients (a batch of 1
    vs 2 through the same matmuls) into steps of order lr; at eps=1e-8 the worst difference after 3 steps
    is about 1.3e-5, here about 2e-8, while the LoRA B matrices (zero at the start) move by about 4e-3.
    """
    overrides = {"max_steps": 3, "checkpoint_every": 3, "optim.eps": 1e-5, "method.roles": roles, "method.dtype": dtype}
    if roles == "copies":  # DMD with full copies: the real score is the frozen teacher
        overrides["method.alpha_weak"] = 0.0
    built, build = [], loop.build_method
    monkeypatch.setattr(loop, "build_method", lambda cfg, device: built.append(build(cfg, device)) or built[-1])
    one = loop.train(tiny_cfg(tmp_path / "one", **overrides), progress=False)  # also builds the latent cache
    want = {k: v.clone() for k, v in built[0].trainable_state().items()}
    initial = {
        k: v.clone() for k, v in build(tiny_cfg(tmp_path / "init", **overrides), "cpu").trainable_state().items()
    }

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    two = tmp_path / "two"
    args = [f"output_dir={two}", f"method.cache_dir={tmp_path / 'one' / 'cache'}", f"sharding={mode}"]
    launch(str(worker), args + [f"{k}={v}" for k, v in overrides.items()])

    ranks = [load_file(two / f"trainable-rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == want.keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in want)  # averaged gradients keep ranks in sync
    assert int(ranks[0]["generator_updates"]) == 1
    reports = [json.loads((two / f"params-rank{r}.json").read_text()) for r in (0, 1)]
    full = sum(p.numel() for p in built[0].transformer.parameters())
    if mode == "fsdp":  # every parameter is a shard, and each process holds about half of the weights
        assert all(r["sharded"] == r["params"] for r in reports), reports
        assert sum(r["local_numel"] for r in reports) == full
        assert all(r["local_numel"] < 0.6 * full for r in reports), (reports, full)
        if dtype == "bfloat16" and roles == "lora":  # frozen weights stay bf16 beside fp32 LoRAs in the shards
            assert all(r["dtypes"] == ["torch.bfloat16", "torch.float32"] for r in reports), reports
    else:
        assert all(r["sharded"] == 0 and r["local_numel"] == full for r in reports), reports
    worst = max(float((ranks[0][k].float() - want[k].float()).abs().max()) for k in want)
    assert worst < (1e-5 if dtype == "float32" else 2e-3), worst
    moved = max(float((want[k].float() - initial[k].float()).abs().max()) for k in want if k != "generator_updates")
    assert moved > 1e-3, moved  # it did train
    # rank 0 alone wrote the run folder: one checkpoint equal to its state, one tensorboard file, one export
    ckpt = load_file(list_checkpoints(two / "checkpoints")[-1] / "trainable.safetensors")
    assert all(torch.equal(ckpt[k], ranks[0][k]) for k in want)
    assert len(list((two / "logs").rglob("events.*"))) == 1
    export = exported(two, roles)
    assert export.keys() == exported(one, roles).keys() and export  # the same artifact as the 1-process run's
    assert all(torch.equal(v, ranks[0][k].to(v.dtype)) for k, v in export.items())
    assert (two / "train_time.json").is_file()
    assert sorted(p.name for p in (two / "validation").iterdir()) == sorted(
        p.name for p in (one / "validation").iterdir()
    )
    if (
        mode == "fsdp" and roles == "lora" and dtype == "float32"
    ):  # resume: 2 more steps from the gathered checkpoint, sharded again
        more = {**overrides, "max_steps": 5}
        loop.train(tiny_cfg(tmp_path / "one", **more), progress=False)
        want = {k: v.clone() for k, v in built[-1].trainable_state().items()}
        launch(str(worker), args + [f"{k}={v}" for k, v in more.items()])
        resumed = load_file(two / "trainable-rank1.safetensors")
        assert int(resumed["generator_updates"]) == 2
        worst = max(float((resumed[k].float() - want[k].float()).abs().max()) for k in want)
        assert worst < 1e-5, worst
