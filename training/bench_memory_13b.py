"""Measure W2SVD and DMD-with-copies training steps at HunyuanVideo-13B width and hold ``w2svd.memory`` to them.

python training/bench_memory_13b.py [--quick] [--out docs/memory/measured.jsonl] [--table docs/memory/table.md]

Each row builds the real ``HunyuanVideoTransformer3DModel`` at 13B width (24 heads x 128 = 3072 hidden, 16 latent
channels, 4096-d Llama and 768-d CLIP text inputs, guidance embedding) with a few double- and single-stream blocks
(``training/bench_memory.py``'s ``hunyuan_slice``), as the 13B config trains it: frozen weights bf16
(``method.dtype``), rank-64 generator and fake-score LoRAs in fp32 (W2SVD), or fp32 generator and fake-score copies
(DMD with copies), AdamW, batch 1, one fake-score and one generator update per step. It runs one full training
step (every phase: loss, backward, clipping, AdamW step, ``zero_grad(set_to_none)``) exactly as ``w2svd.trainer``
does, in a fresh process, after a zero-gradient AdamW step that allocates the optimiser states (a steady-state
step has them; the zero step changes no weight). The generator has 1 step: the rollout of a 4-step generator adds
only no-grad passes before the measured part (their temporaries are the same as the score passes' below).

Measured (CPU): live tensor bytes, like CUDA's ``max_memory_allocated`` (``w2svd.memtrack.LiveMemory``: every
storage an operator creates, forward, backward and optimiser alike, counted until freed), split into weights (the
transformers' parameters), optimiser states, gradients (of the phase, after its backward), tensors saved for
backward (``saved_tensors_hooks``) and the rest of the step's peak (temporaries: the no-grad score passes and
backward's working memory). The peak resident size (RSS) is given as a cross-check; it also counts freed memory
the C allocator keeps. Encoders, VAE and latent cache are resident but not counted (the planner does not count
them either, and 13B training reads prepared latents).

Then ``w2svd.memory.estimate`` on exactly each slice, token count and setting, the planned-vs-measured table,
and (``--fit``) the least-squares per-block coefficients that the planner's constants should hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

GiB, MiB = 2**30, 2**20
CASES = {
    "w2svd": {"lambda_gt": 0.0},
    "w2svd-gt": {"lambda_gt": 0.5},
    "dmd-copies": {"roles": "copies", "alpha_weak": 0.0, "lambda_gt": 0.0},
}
RANK = 64  # hunyuanvideo_w2svd.yaml


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement: a method at a slice, clip shape and checkpointing setting."""

    case: str
    double: int
    single: int
    frames: int
    size: int
    ckpt: bool = False
    refiner: int = 1  # token-refiner layers (13B: 2); 0 lets the copies' three models fit in 24 GiB of RAM
    heads: int = 24  # of 128 channels: 24 = 3072 hidden, as 13B (fewer only in tests)
    text: tuple[int, int] = (4096, 768)  # Llama and CLIP widths, as 13B (smaller only in tests)
    rank: int = RANK

    @property
    def name(self) -> str:
        ck = "+ckpt" if self.ckpt else ""
        return f"{self.case}{ck} {self.double}+{self.single} blocks r{self.refiner} {self.frames}x{self.size}"


# The matrix of docs/memory/README.md: 1+1, 2+2, 4+4 (and 2+1, 1+3 to separate double- from single-stream
# blocks) for W2SVD with and without the ground-truth term; copies on slices whose three models fit in RAM.
MATRIX = [
    *(Row(c, d, s, 17, 128, ck) for c in ("w2svd", "w2svd-gt") for d, s in ((1, 1), (2, 2), (4, 4)) for ck in (0, 1)),
    *(Row(c, 1, 1, 33, 128) for c in ("w2svd", "w2svd-gt")),
    Row("w2svd", 2, 1, 17, 128),
    Row("w2svd", 1, 3, 17, 128),
    *(Row("dmd-copies", d, s, 17, 128, ck, refiner=0) for d, s in ((0, 1), (0, 2), (1, 0)) for ck in (0, 1)),
    Row("dmd-copies", 0, 1, 33, 128, refiner=0),
    *(Row("dmd-copies", 0, 1, 33, 192, ck, refiner=0) for ck in (0, 1)),  # more tokens: activations over gradients
]
QUICK = [Row("w2svd-gt", 1, 1, 9, 64), Row("dmd-copies", 0, 1, 9, 64, refiner=0)]


def row_config(row: Row, tmp: str) -> dict:
    """The TrainConfig dict of ``row`` (bench_memory.case_config on a 13B-width slice)."""
    from bench_memory import case_config, hunyuan_slice

    shape = hunyuan_slice(row.double, row.single, row.frames, row.size, row.refiner, row.heads, tuple(row.text))
    cfg = case_config("w2svd-lora", "embedded", tmp, shape)
    cfg["method"].update(
        steps=1,
        dtype="bfloat16",
        generator_rank=row.rank,
        generator_lora_alpha=row.rank,
        fake_rank=row.rank,
        fake_lora_alpha=row.rank,
        gradient_checkpointing=bool(row.ckpt),
        fake_updates_per_generator_update=1,
        **CASES[row.case],
    )
    return cfg


# ---- one row, in its own process ---------------------------------------------------------------------
def measure_row(row: Row) -> dict:
    import torch
    from bench_memory import release_free_memory, reset_peak, rss_bytes

    from w2svd.config import from_dict
    from w2svd.memtrack import LiveMemory, storage_bytes
    from w2svd.trainer import build_method, make_optimizers
    from w2svd.training.config import TrainConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = from_dict(TrainConfig, row_config(row, tmp))
        torch.manual_seed(0)
        method = build_method(cfg, torch.device("cpu"))
        groups = method.param_groups()
        o = cfg.optim
        optimizers = make_optimizers(groups, o, foreach=True)  # AdamW's CUDA default; its temporaries count
        for phase, (params, _) in groups.items():  # allocate the AdamW states: zero gradients change nothing
            for p in params:
                p.grad = torch.zeros_like(p)
            optimizers[phase].step()
            optimizers[phase].zero_grad(set_to_none=True)
        method.train(True)
        transformers = [method.transformer, *getattr(getattr(method, "roles", None), "modules", {}).values()]
        weights = storage_bytes(p for m in transformers for p in m.parameters())
        optim = storage_bytes(t for opt in optimizers.values() for s in opt.state.values() for t in s.values())
        tokens: list[int] = []

        def count_tokens(module, args, kwargs):
            x, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
            pt, ps = module.config.patch_size_t, module.config.patch_size
            tokens.append(x.shape[2] // pt * (x.shape[3] // ps) * (x.shape[4] // ps) + text.shape[1])

        hooks = [m.register_forward_pre_hook(count_tokens, with_kwargs=True) for m in transformers]
        release_free_memory()
        with warnings.catch_warnings():  # isinstance on every object touches deprecated torch attributes
            warnings.simplefilter("ignore", FutureWarning)
            resident = [t for t in gc.get_objects() if isinstance(t, torch.Tensor)]
        rss_start, peak_reset = rss_bytes(), reset_peak()
        phases, trained = {}, set()
        t0 = time.perf_counter()
        with LiveMemory("cpu") as mem:
            mem.add_existing(resident)  # parameters, buffers, AdamW states, latent cache
            del resident
            start = mem.live
            batch = method.batch(0)
            known = {p.untyped_storage().data_ptr() for m in transformers for p in m.parameters()}
            for phase in method.phases(0):
                saved: dict[int, int] = {}

                def pack(t, saved=saved, known=known):
                    s = t.untyped_storage()
                    if s.data_ptr() not in known:
                        saved[s.data_ptr()] = s.nbytes()
                    return t

                mem.reset_peak()
                method.arm(phase)
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss, _ = method.loss(phase, batch)
                after_forward = mem.live - start
                forward_peak = mem.peak - start  # the forward and (generator phase) the no-grad score passes
                method.arm(phase)
                loss.backward()
                del loss
                backward_peak = mem.peak - start  # forward, the score passes and backward
                params = groups[phase][0]
                grads = storage_bytes(p.grad for p in params if p.grad is not None)
                trained |= {id(p) for p in params if p.grad is not None}
                mem.reset_peak()
                if o.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
                optimizers[phase].step()
                step_peak = mem.peak - start  # gradients + clipping and AdamW temporaries
                optimizers[phase].zero_grad(set_to_none=True)
                method.after_step(phase)
                phases[phase] = {
                    "peak": max(backward_peak, step_peak),
                    "forward_peak": forward_peak,
                    "backward_peak": backward_peak,
                    "step_peak": step_peak,
                    "grads": grads,
                    "saved": sum(saved.values()),
                    "after_forward": after_forward,
                }
        for h in hooks:
            h.remove()
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # parameters that got no gradient (the token refiner's embedders when it has no layers) would have no
        # AdamW state in a real run: their zero-step states are left out of the optimiser figure
        untrained = storage_bytes(
            t for opt in optimizers.values() for p, s in opt.state.items() if id(p) not in trained for t in s.values()
        )
    return {
        **dataclasses.asdict(row),
        "tokens": max(tokens),
        "weights": weights,
        "optimizer": optim - untrained,
        "phases": phases,
        "rss_step": rss_peak - rss_start if peak_reset else None,
        "seconds": time.perf_counter() - t0,
        "trainable": sum(p.numel() for params, _ in groups.values() for p in params),
    }


# ---- planner and table ---------------------------------------------------------------------------------
def planned(r: dict):
    """``w2svd.memory.estimate`` for the slice and token count the row measured."""
    from bench_memory import hunyuan_slice

    from w2svd.memory import count_transformer, estimate

    row = Row(**_key(r))
    shape = hunyuan_slice(row.double, row.single, row.frames, row.size, row.refiner, row.heads, tuple(row.text))
    counts = count_transformer(shape["random_base"]["transformer"])
    method = "dmd-copies" if row.case == "dmd-copies" else "w2svd"
    gt = CASES[row.case]["lambda_gt"]
    return estimate(counts, r["tokens"], method, 1, 1, row.rank, "none", row.ckpt, False, gt)


def measured_total(r: dict) -> float:
    return r["weights"] + r["optimizer"] + max(p["peak"] for p in r["phases"].values())


def activation_peak(r: dict) -> float | None:
    """The measured counterpart of the plan's activations: the forward peak (no checkpointing; the peak comes
    before backward) or the backward peak less the gradients (checkpointing), the larger phase."""
    if r["ckpt"]:
        if r["case"] == "dmd-copies":  # its backward peak is the copies' gradients: the rest is not separable
            return None
        return max(p["backward_peak"] - p["grads"] for p in r["phases"].values())
    return max(p["forward_peak"] for p in r["phases"].values())


def step_temporaries(r: dict) -> float:
    return max(p["step_peak"] - p["grads"] for p in r["phases"].values())


def _err(plan: float, measured: float) -> str:
    return f"{plan / measured - 1:+.0%}" if measured > 2**20 else "-"


def table(rows: list[dict]) -> str:
    """Measured (planned) GiB per row; 'step' is the peak over the static parts, 'error' the plan's on the total."""
    lines = [
        "| case | blocks | tokens | ckpt | weights | optimiser | gradients | activation peak (error) "
        "| AdamW temporaries | step peak (error) | total | plan | error | RSS step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    g = GiB
    order = list(CASES)
    rows = sorted(rows, key=lambda r: (order.index(r["case"]), r["ckpt"], r["double"], r["single"], r["tokens"]))
    for r in rows:
        est = planned(r)
        grads = max(p["grads"] for p in r["phases"].values())
        act, tmp = activation_peak(r), step_temporaries(r)
        act_cell = (
            f"{act / g:.3f} ({est.activations / g:.3f}, {_err(est.activations, act)})"
            if act is not None
            else f"hidden by the gradients ({est.activations / g:.3f})"
        )
        step = max(p["peak"] for p in r["phases"].values())
        plan_step = est.total - est.weights - est.optimizer
        total = measured_total(r)
        rss = f"{r['rss_step'] / g:.2f}" if r.get("rss_step") else "-"
        lines.append(
            f"| {r['case']} | {r['double']}+{r['single']} | {r['tokens']} | {'on' if r['ckpt'] else 'off'} | "
            f"{r['weights'] / g:.2f} ({est.weights / g:.2f}) | {r['optimizer'] / g:.3f} ({est.optimizer / g:.3f}) | "
            f"{grads / g:.3f} ({est.gradients / g:.3f}) | {act_cell} | {tmp / g:.3f} ({est.temporaries / g:.3f}) | "
            f"{step / g:.3f} ({plan_step / g:.3f}, {_err(plan_step, step)}) | {total / g:.2f} | {est.total / g:.2f} | "
            f"{est.total / total - 1:+.1%} | {rss} |"
        )
    return "\n".join(lines)


def fit(rows: list[dict]) -> str:
    """Least squares for the planner's activation coefficients (bytes per token per hidden unit), by layout."""
    import numpy as np

    from w2svd.memory import CKPT_KEPT

    out = []
    for kind in ("lora", "full"):
        sel = [r for r in rows if (r["case"] == "dmd-copies") == (kind == "full")]
        a, b = [], []  # no checkpointing: each phase's forward peak; unknowns A_double, A_single, WORK_GEN, WORK_FAKE
        for r in (r for r in sel if not r["ckpt"]):
            graphs = 2 if CASES[r["case"]]["lambda_gt"] > 0 else 1
            th = r["tokens"] * r.get("heads", 24) * 128
            a.append([r["double"], r["single"], 1, 0])
            b.append(r["phases"]["generator"]["forward_peak"] / th)
            a.append([graphs * r["double"], graphs * r["single"], 0, 1])
            b.append(r["phases"]["fake_score"]["forward_peak"] / th)
        if a and np.linalg.matrix_rank(np.array(a)) == 4:
            a, b = np.array(a, float), np.array(b)
            coef, *_ = np.linalg.lstsq(a, b, rcond=None)
            err = float(np.max(np.abs(a @ coef / b - 1)))
            out.append(
                f"{kind}, no checkpointing: ACT (double, single) = ({coef[0]:.1f}, {coef[1]:.1f}), WORK_GEN "
                f"{coef[2]:.1f}, WORK_FAKE {coef[3]:.1f}; {len(b)} phase peaks, worst fit error {err:.1%}"
            )
        kept = CKPT_KEPT[kind]  # block inputs: bf16 hidden states (LoRA), fp32 (the fp32 copies)
        a, b = [], []  # checkpointing: backward peak less gradients - kept inputs; unknowns RECOMPUTE, WORK
        for r in (r for r in sel if r["ckpt"]):
            graphs = 2 if CASES[r["case"]]["lambda_gt"] > 0 else 1
            th = r["tokens"] * r.get("heads", 24) * 128
            p = max(r["phases"].values(), key=lambda p: p["backward_peak"] - p["grads"])
            a.append([graphs, 1])
            b.append((p["backward_peak"] - p["grads"]) / th - kept * graphs * (r["double"] + r["single"]))
        if len(b) >= 2 and np.linalg.matrix_rank(np.array(a)) == 2:
            a, b = np.array(a, float), np.array(b)
            coef, *_ = np.linalg.lstsq(a, b, rcond=None)
            one, two = b[a[:, 0] == 1].max(), b[a[:, 0] == 2].max()  # the upper envelope: no row under-planned
            out.append(
                f"{kind}, checkpointing: KEPT {kept:g} (fixed); least squares RECOMPUTE {coef[0]:.1f}, WORK "
                f"{coef[1]:.1f} (residuals {np.round(b - a @ coef, 1).tolist()}); upper envelope RECOMPUTE "
                f"{two - one:.1f}, WORK {2 * one - two:.1f} ({len(b)} rows)"
            )
        elif b:
            out.append(f"{kind}, checkpointing: backward peak less gradients and kept inputs {np.round(b, 1).tolist()}")
    return "\n".join(out)


def run_child(row: Row) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(row))]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{row.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small rows (a smoke check, about a minute)")
    ap.add_argument("--out", type=Path, help="append each measured row to this JSON-lines file (kept on a crash)")
    ap.add_argument("--resume", action="store_true", help="skip rows already in --out")
    ap.add_argument("--from-file", type=Path, help="print the table (and fit) of a JSON-lines file; measure nothing")
    ap.add_argument("--fit", action="store_true", help="also print least-squares activation coefficients")
    ap.add_argument("--table", type=Path, help="also write the table here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure_row(Row(**json.loads(args.child)))))
        return 0
    if args.from_file:
        rows = [json.loads(line) for line in args.from_file.read_text().splitlines() if line.strip()]
    else:
        done = set()
        if args.resume and args.out and args.out.is_file():
            done = {json.dumps(_key(json.loads(line))) for line in args.out.read_text().splitlines() if line.strip()}
        rows = []
        for row in QUICK if args.quick else MATRIX:
            if json.dumps(_key(dataclasses.asdict(row))) in done:
                continue
            t0 = time.perf_counter()
            r = run_child(row)
            rows.append(r)
            print(f"  {row.name}: {measured_total(r) / GiB:.2f} GiB, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
        if args.resume and args.out:
            rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    text = table(rows)
    print(text)
    if args.fit:
        print()
        print(fit(rows))
    if args.table:
        args.table.write_text(text + "\n")
    return 0


def _key(r: dict) -> dict:
    """The Row fields of a measured row (rows written before a field existed get its default)."""
    return {f.name: r.get(f.name, f.default) for f in dataclasses.fields(Row)}


if __name__ == "__main__":
    raise SystemExit(main())
