"""Train any w2svd method from a YAML config: python training/run.py --config CONFIG [key=value ...]."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from w2svd.config import ConfigError, load_config  # noqa: E402
from w2svd.training.checkpoint import CheckpointError  # noqa: E402
from w2svd.training.config import TrainConfig  # noqa: E402
from w2svd.training.run_folder import RunLockedError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Train a w2svd method. Re-running the same command resumes from the latest checkpoint.",
        epilog="Overrides use dotted keys, e.g. max_steps=200 output_dir=runs/x method.alpha_weak=0.25",
    )
    ap.add_argument("--config", required=True, help="YAML file in training/configs/")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (values parsed as YAML)")
    ap.add_argument(
        "--dry-run", action="store_true", help="print the resolved config (distillation: and its memory plan); exit"
    )
    ap.add_argument("--gpus", type=int, default=1, help="--dry-run: GPUs the memory plan assumes (default 1)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ap.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run with changed training settings (the old config is kept in config-history/)",
    )
    args = ap.parse_intermixed_args(argv)  # flags may come between the key=value overrides
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        from w2svd.trainer import resolve_method, train

        _, method_cfg = resolve_method(cfg)  # checks the method section before any model is built
        if args.dry_run:
            resolved = dataclasses.asdict(cfg)
            resolved["method"] = {"name": cfg.method["name"], **dataclasses.asdict(method_cfg)}
            print(yaml.safe_dump(resolved, sort_keys=False))
            if hasattr(method_cfg, "generator_rank"):  # a distillation run: what it needs per GPU
                from w2svd.memory import plan_for_config

                try:  # as YAML comments, so the output stays a config file
                    plan = plan_for_config(cfg, method_cfg, max(1, args.gpus))
                except (OSError, ValueError) as e:
                    plan = f"memory plan not available: {e}"
                print("\n".join(f"# {line}" for line in plan.splitlines()))
            return 0
        out = train(cfg, progress=not args.no_progress, allow_config_change=args.allow_config_change)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (RunLockedError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
