"""The one training loop: every method (features, VAE, teacher, W2SVD, DMD, LCM) runs through it.

Under ``accelerate launch --num_processes N`` it is data parallel: each process trains on its rows of the
global batch, gradients are averaged over processes before clipping, and only the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from w2svd.config import ConfigError, from_dict
from w2svd.methods import METHODS, Method
from w2svd.methods.validation import LOSSES_FILE
from w2svd.training import sharding
from w2svd.training.checkpoint import load_latest, save_checkpoint, set_rng_state
from w2svd.training.config import OptimConfig, TrainConfig
from w2svd.training.run_folder import RunLock, check_output_dir, record_config

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_SKIPS = 10  # with skip_nonfinite, more consecutive steps with a skipped update stop the run
BUCKET_NUMEL = 1 << 25  # gradients are all-reduced in flat buckets of at most this many elements


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the run stops and the last checkpoint stays valid."""


def resolve_method(cfg: TrainConfig) -> tuple[type[Method], object]:
    """The method class named by ``cfg.method.name`` and its checked config, without building models."""
    args = dict(cfg.method)
    name = args.pop("name")
    if name not in METHODS:
        raise ConfigError(f"config.method.name={name!r} is not a known method; valid: {sorted(METHODS)}")
    cls = METHODS[name]
    if cfg.optim.lr is not None and not cls.uses_optim_lr:
        raise ConfigError(
            f"optim.lr={cfg.optim.lr} is not used by method {name!r}, which sets its learning rates in the method "
            "section (w2svd: method.generator_lr and method.fake_lr; lcm: method.lr); remove optim.lr"
        )
    return cls, from_dict(cls.config_class, args, f"config.method({name})")


def make_optimizers(groups: dict, o, **kwargs) -> dict[str, torch.optim.AdamW]:
    """One AdamW per phase of ``method.param_groups()`` with the run's ``optim`` settings (``kwargs``: e.g. foreach)."""
    return {
        phase: torch.optim.AdamW(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, **kwargs)
        for phase, (params, lr) in groups.items()
    }


def build_method(cfg: TrainConfig, device: torch.device) -> Method:
    cls, mcfg = resolve_method(cfg)
    return cls(mcfg, cfg, device)


def lr_lambda(optim: OptimConfig, max_steps: int):
    def f(step: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "cosine":
            progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
            return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return f


def shard_for(batch_size: int, num_processes: int, process_index: int) -> slice:
    """The rows of each step's global batch of ``batch_size`` that process ``process_index`` trains on."""
    if batch_size % num_processes:
        raise ConfigError(
            f"batch_size={batch_size} is the global batch and must be divisible by the number of processes "
            f"({num_processes}); set batch_size to a multiple of {num_processes}"
        )
    per = batch_size // num_processes
    return slice(process_index * per, (process_index + 1) * per)


def average_gradients(params: list[torch.nn.Parameter], num_processes: int) -> None:
    """Replace each gradient by its mean over processes (all-reduce of flat buckets of same-dtype gradients)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for g in (p.grad for p in params if p.grad is not None):
        if not buckets or buckets[-1][0].dtype != g.dtype or size + g.numel() > BUCKET_NUMEL:
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += g.numel()
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        torch.distributed.all_reduce(flat)
        flat /= num_processes
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def fsdp_settings(cfg: TrainConfig, accelerator: Accelerator) -> dict | None:
    """Sharding options when this run shards (``sharding: fsdp`` or an accelerate FSDP config), else None."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError(
            "DeepSpeed is not supported by the training loop: W2SVD steps two optimisers (generator and fake-score "
            "LoRAs) on one shared frozen backbone, and a DeepSpeed engine owns one model and one optimiser; "
            "launch with training/accelerate/fsdp_8gpu.yaml (FSDP2 shards the backbone the same way as ZeRO-3)"
        )
    if cfg.sharding != "fsdp" and kind != DistributedType.FSDP:
        return None
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    classes = getattr(plugin, "transformer_cls_names_to_wrap", None) or None
    reshard = getattr(plugin, "reshard_after_forward", True)
    if getattr(plugin, "activation_checkpointing", False):
        log.warning("fsdp_activation_checkpointing is not applied by the loop; use method.gradient_checkpointing")
    offload = getattr(plugin, "cpu_offload", None)
    if getattr(offload, "offload_params", False) or type(offload).__name__ == "CPUOffloadPolicy":
        log.warning("fsdp_offload_params is not applied by the loop: parameters stay on the GPU")
    return {"classes": classes, "reshard_after_forward": reshard if isinstance(reshard, bool) else True}


def mean_over_processes(x: torch.Tensor, num_processes: int) -> float:
    """The mean of scalar ``x`` over processes (NaN if it is NaN on any), the same value on every process."""
    if num_processes == 1:
        return float(x)
    t = x.detach().float().reshape(1).clone()
    torch.distributed.all_reduce(t)
    return float(t) / num_processes


class StopRequest:
    """SIGTERM (a scheduler's or ``kill``'s stop) and SIGINT (Ctrl-C) ask the training loop to stop after the step
    in progress, so the checkpoint it saves holds whole steps and a resume continues bitwise alike; a second signal
    stops at once (KeyboardInterrupt). SIGINT stays ignored where the shell started the run with it ignored (a
    background ``cmd &``): stop those with SIGTERM."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            raise KeyboardInterrupt(f"second {name}")
        self.signal = name
        log.warning("%s: stopping after this step (with a checkpoint); send it again to stop at once", name)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # signal handlers live on the main thread
            yield self
            return
        names = ["SIGTERM"] + ([] if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else ["SIGINT"])
        before = {name: signal.signal(getattr(signal, name), self._handle) for name in names}
        try:
            yield self
        finally:
            for name, handler in before.items():
                signal.signal(getattr(signal, name), handler)


def train(cfg: TrainConfig, progress: bool = True, allow_config_change: bool = False) -> Path:
    """Train (or resume) the run in ``cfg.output_dir``; export the method's artifact there; return the folder.

    The main process holds the folder's lock for the whole run and refuses to resume with changed training
    settings unless ``allow_config_change`` (``run_folder.record_config``).
    """
    out = Path(cfg.output_dir)
    check_output_dir(out)
    main_launch = os.environ.get("RANK", "0") == "0"  # torchrun / accelerate set RANK on every process
    with RunLock(out) if main_launch else contextlib.nullcontext():
        if main_launch:
            record_config(cfg, out, allow_config_change)
        with StopRequest().installed() as stop:
            return _train(cfg, out, progress, stop)


def _train(cfg: TrainConfig, out: Path, progress: bool, stop: StopRequest) -> Path:
    run = Run(cfg, out)
    run.resume()
    run.accelerator.init_trackers("logs")
    run.method.train(True)
    quiet = not (progress and run.main)
    bar = tqdm(total=cfg.max_steps, initial=run.start, desc=run.method.name, disable=quiet, dynamic_ncols=True)
    step, consecutive, stopped_cleanly = run.start, 0, False
    run.t0 = time.perf_counter()  # wall time and steps/s count training, not building and resuming
    try:
        while step < cfg.max_steps:
            logs, problem = run.train_step(step)
            consecutive = consecutive + 1 if problem else 0
            if consecutive > MAX_CONSECUTIVE_SKIPS:
                raise NonFiniteLossError(
                    f"{problem}; {consecutive} consecutive steps had a non-finite loss (skip_nonfinite allows "
                    f"{MAX_CONSECUTIVE_SKIPS}); the last checkpoint in {out / 'checkpoints'} is kept; "
                    "lower the learning rate or check data"
                )
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                run.log(step, logs, bar, progress)
            if cfg.validate_every and step % cfg.validate_every == 0 and step < cfg.max_steps:
                run_validation(run.method, run.accelerator, out, step, bool(run.sharded_modules))
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                run.checkpoint(step)
            if (why := stop.signal) is not None and step < cfg.max_steps:
                stopped_cleanly = True
                if step % cfg.checkpoint_every == 0:
                    log.warning("%s: stopped at step %d, its checkpoint saved; re-run to resume", why, step)
                elif run.sharded_modules:  # gathering shards needs every process at this step: not guaranteed
                    log.warning("%s: stopped at step %d; sharded runs keep the last periodic checkpoint", why, step)
                else:
                    run.checkpoint(step)
                    log.warning("%s: saved a checkpoint at step %d; re-run the same command to resume", why, step)
                raise KeyboardInterrupt(why)
    except KeyboardInterrupt:
        if stopped_cleanly:
            raise
        if stop.signal is None:  # raised by something other than the handler: a whole step is not guaranteed
            if step > run.start and run.main and not run.sharded_modules:
                run.checkpoint(step)
                log.warning("interrupted: saved a checkpoint at step %d; re-run the same command to resume", step)
        else:  # a second signal, mid-step: saving would mix a half-applied step into the checkpoint
            log.warning("stopped at once (second signal): the last periodic checkpoint is kept, not step %d", step)
        raise
    finally:
        bar.close()
    run_validation(run.method, run.accelerator, out, step, bool(run.sharded_modules))
    run.finish(step)
    return out


class Run:
    """One training run's live state: accelerator, method, optimisers and schedulers per phase, counters."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        launched = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
        self.accelerator = accelerator = Accelerator(
            cpu=launched > 1 and not torch.cuda.is_available(),  # several processes without GPUs: gloo on CPU
            mixed_precision=cfg.mixed_precision,
            log_with="tensorboard",
            project_dir=str(out),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s))],
        )
        self.world, self.main = accelerator.num_processes, accelerator.is_main_process
        if launched > 1 and self.world != launched:
            raise RuntimeError(
                f"WORLD_SIZE={launched} processes were launched but accelerate set up {self.world}; "
                "launch with `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`"
            )
        shard = shard_for(cfg.batch_size, self.world, accelerator.process_index)
        set_seed(cfg.seed)
        with accelerator.main_process_first():  # the main process builds a missing latent cache, the others read it
            self.method = build_method(cfg, accelerator.device)
        self.method.shard = shard
        self.sharded_modules = self._shard()
        self.groups = self.method.param_groups()
        self.schedulers = {}
        o = cfg.optim
        self.optimizers = make_optimizers(self.groups, o)
        for phase, opt in self.optimizers.items():
            self.schedulers[phase] = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, cfg.max_steps))
        self.start, self.elapsed, self.skipped = 0, 0.0, 0
        self.t0 = time.perf_counter()

    def _shard(self) -> list[torch.nn.Module]:
        """FSDP2-shard the method's transformers when this run shards; the modules sharded (none otherwise)."""
        fsdp = fsdp_settings(self.cfg, self.accelerator) if self.world > 1 else None
        if fsdp is None:
            return []
        modules = self.method.sharded_modules()
        if not modules:
            raise ConfigError(
                f"method {self.method.name!r} does not support sharding=fsdp (only the distillation methods do); "
                "set sharding=none"
            )
        units = sharding.shard_modules(modules, fsdp["classes"], fsdp["reshard_after_forward"])
        self.method.rebind_parameters()
        log.info("FSDP: %d modules sharded in %d units over %d processes", len(modules), units, self.world)
        return modules

    def resume(self) -> None:
        """Load the newest checkpoint that verifies, if any (every process reads the same files)."""
        found = load_latest(self.out / "checkpoints")
        if found is None:
            return
        tensors, state, path = found
        self.method.load_trainable_state(tensors)
        for phase, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][phase])
            sharding.shard_optimizer_state(opt)
            self.schedulers[phase].load_state_dict(state["schedulers"][phase])
            self._apply_configured_lr(phase)
        set_rng_state(state["rng"])
        self.start = int(state["step"])
        self.elapsed = float(state.get("elapsed_seconds", 0.0))
        self.skipped = int(state.get("skipped_nonfinite", 0))
        log.info("resumed from %s at step %d", path, self.start)

    def _apply_configured_lr(self, phase: str) -> None:
        """Use this config's learning rate for ``phase`` after loading a checkpoint's optimiser and scheduler.

        Both state dicts carry the learning rate they were created with (``initial_lr``, ``base_lrs``), so without this
        a run resumed with ``--allow-config-change`` and a new learning rate would silently keep the old one.
        """
        lr = self.groups[phase][1]
        opt, sched = self.optimizers[phase], self.schedulers[phase]
        if sched.base_lrs and sched.base_lrs[0] != lr:
            log.info("%s learning rate %g -> %g (this config's)", phase, sched.base_lrs[0], lr)
        sched.base_lrs = [lr] * len(opt.param_groups)
        factor = sched.lr_lambdas[0](sched.last_epoch)
        for group in opt.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * factor
        sched._last_lr = [group["lr"] for group in opt.param_groups]

    def checkpoint(self, step: int) -> None:
        method, sharded = self.method, bool(self.sharded_modules)
        tensors = sharding.gather(method.trainable_state()) if sharded else method.trainable_state()
        optim_states = {k: v.state_dict() for k, v in self.optimizers.items()}
        if sharded:  # every process takes part in gathering the shards; the main one writes
            optim_states = {k: sharding.gather(v) for k, v in optim_states.items()}
        if not self.main:
            return
        state = {
            "optimizers": optim_states,
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "elapsed_seconds": self.elapsed + time.perf_counter() - self.t0,
            "skipped_nonfinite": self.skipped,
        }
        save_checkpoint(self.out / "checkpoints", step, tensors, state, self.cfg.checkpoints_total_limit)

    def train_step(self, step: int) -> tuple[dict[str, float], str]:
        """Every phase of ``step``: (logs, the non-finite problem of a skipped phase or '')."""
        batch = self.method.batch(step)
        logs: dict[str, float] = {}
        problem = ""
        for phase in self.method.phases(step):
            self.method.arm(phase)  # the one place that decides what learns (role switches never do)
            loss, terms = self.method.loss(phase, batch)
            value = mean_over_processes(loss.detach(), self.world)  # every process takes the same branch below
            if not math.isfinite(value):
                problem = self._skip(step, phase, value, terms)
                continue
            self.method.arm(phase)  # again: the trained network active for what backward recomputes
            self.update(step, phase, loss, logs)
            logs[f"{phase}/loss"] = value  # the mean over processes; terms are the main process's
            logs[f"{phase}/lr"] = self.schedulers[phase].get_last_lr()[0]
            logs.update(terms)
        if self.cfg.skip_nonfinite:
            logs["train/skipped_nonfinite"] = self.skipped
        return logs, problem

    def _skip(self, step: int, phase: str, value: float, terms: dict) -> str:
        problem = f"step {step}: loss of phase {phase!r} is {value} (terms {terms})"
        if not self.cfg.skip_nonfinite:
            raise NonFiniteLossError(
                f"{problem}; the last checkpoint in {self.out / 'checkpoints'} is kept; "
                "lower the learning rate or check data (or set skip_nonfinite=true)"
            )
        self.skipped += 1
        if self.main:
            log.warning("%s: update skipped (skip_nonfinite), %d skipped so far", problem, self.skipped)
        self.optimizers[phase].zero_grad(set_to_none=True)
        return problem

    def update(self, step: int, phase: str, loss: torch.Tensor, logs: dict[str, float]) -> None:
        """Backward, gradient averaging and clipping, and the optimiser and scheduler step of ``phase``."""
        self.accelerator.backward(loss)
        params, clip = self.groups[phase][0], self.cfg.optim.grad_clip
        if not any(p.grad is not None for p in params):
            raise RuntimeError(
                f"step {step}: the loss of phase {phase!r} gave its {len(params)} parameters no gradient; "
                "the method's loss does not depend on what this phase trains"
            )
        if self.world > 1:  # sharded gradients arrive reduce-scattered and averaged already
            average_gradients([p for p in params if not sharding.is_sharded(p)], self.world)
        if clip > 0 and self.sharded_modules:
            logs[f"{phase}/grad_norm"] = sharding.clip_grad_norm(params, clip)
        elif clip > 0:
            logs[f"{phase}/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))
        self.optimizers[phase].step()
        self.schedulers[phase].step()
        self.optimizers[phase].zero_grad(set_to_none=True)
        self.method.after_step(phase)

    def log(self, step: int, logs: dict[str, float], bar, progress: bool) -> None:
        logs["time/steps_per_s"] = (step - self.start) / (time.perf_counter() - self.t0)
        self.accelerator.log(logs, step=step)
        losses = {k.split("/")[0]: f"{v:.4g}" for k, v in logs.items() if k.endswith("/loss")}
        bar.set_postfix(losses)
        if self.main:  # the loss curve as JSON lines: read without tensorboard, kept by stash_run.sh
            with open(self.out / LOSSES_FILE, "a") as f:
                f.write(json.dumps({"step": step, **{k: v for k, v in logs.items() if k.endswith("/loss")}}) + "\n")
        if self.main and not progress:  # keep a readable trace in log files
            log.info("step %d/%d %s %.2f steps/s", step, self.cfg.max_steps, losses, logs["time/steps_per_s"])

    def finish(self, step: int) -> None:
        """Export the method's artifact and the wall time; every process returns once they are written."""
        self.method.train(False)
        self.method.export(self.out, write=self.main)  # every process takes part (sharded modules gather)
        if self.main:
            seconds = self.elapsed + time.perf_counter() - self.t0
            (self.out / "train_time.json").write_text(json.dumps({"seconds": round(seconds, 1), "steps": step}))
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def run_validation(method: Method, accelerator: Accelerator, out: Path, step: int, everyone: bool = False) -> None:
    """Render and log validation on the main process; the others wait (up to ``dist_timeout_s``).

    ``everyone``: sharded modules need every process in each forward, so all of them render the same
    samples and the others write theirs into a scratch folder that is deleted.
    """
    if not (accelerator.is_main_process or everyone):
        accelerator.wait_for_everyone()
        return
    method.train(False)
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="w2svd-val-") as scratch:
        folder = out / "validation" if accelerator.is_main_process else Path(scratch)
        metrics = method.validate(step, folder)
    if metrics and accelerator.is_main_process:
        accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        log.info("step %d validation: %s", step, metrics)
    method.train(True)
    accelerator.wait_for_everyone()
