"""The benchmark: every row (real clips, base at N steps, a distilled LoRA) scored on the held-out pairs.

Writes a markdown table and a JSON file; every number is measured in the run that writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2svd.config import ConfigError
from w2svd.data import HELDOUT_SEED, heldout_examples
from w2svd.eval import intervals, metrics
from w2svd.eval.features import load_feature_nets
from w2svd.eval.intervals import PerClip, verdict
from w2svd.eval.motion_regions import region_figures
from w2svd.eval.temporal import ratio, summarise
from w2svd.generator_meta import GeneratorMeta
from w2svd.lora import WEIGHT_NAME, lora_file
from w2svd.pipeline import GENERATOR_META, MAX_CFG_SCALE, VideoGenerator
from w2svd.training.run_folder import in_use


@dataclasses.dataclass
class Row:
    name: str
    kind: str  # real | base (Euler on the base) | lora (a distilled LoRA) | transformer (a full distilled one)
    steps: int = 0  # 0: the model's default
    cfg_scale: float | None = None  # classifier-free guidance for kind=base (> 1 doubles the NFE); None: the base's
    lora: str = ""  # LoRA folder/file/Hub id for kind=lora
    path: str = ""  # run folder or its transformer/ subfolder for kind=transformer (DMD with full copies)
    run_dir: str = ""  # training run folder, to report training steps and wall time
    train: str = ""  # the command that trains this row's weights (shown when they are missing)

    def validate(self) -> None:
        if self.kind not in ("real", "base", "lora", "transformer"):
            raise ConfigError(f"rows[{self.name}].kind={self.kind!r} must be 'real', 'base', 'lora' or 'transformer'")
        if self.cfg_scale is not None and (self.kind != "base" or not 1.0 <= self.cfg_scale <= MAX_CFG_SCALE):
            raise ConfigError(
                f"rows[{self.name}].cfg_scale={self.cfg_scale} needs kind=base and a value in [1, {MAX_CFG_SCALE:g}]"
            )
        if self.kind == "lora" and not self.lora:
            raise ConfigError(f"rows[{self.name}] has kind=lora but no `lora` path")
        if self.kind == "transformer" and not self.path:
            raise ConfigError(f"rows[{self.name}] has kind=transformer but no `path` (the run folder)")

    def training(self) -> bool:
        """A training run holds the row's folder now: its weights (an earlier export, or a copy's) are not final."""
        folders = {Path(f) for f in (self.lora if self.kind == "lora" else self.path, self.run_dir) if f}
        if self.kind == "transformer":  # `path` may name the run folder's transformer/ subfolder
            folders |= {f.parent for f in folders if f.name == "transformer"}
        return any(in_use(f) for f in folders if f.is_dir())

    def missing(self) -> bool:
        """A trained row whose weights are not there yet; a run folder that is still training counts as missing."""
        if not self.train or self.kind not in ("lora", "transformer"):
            return False
        target = Path(self.lora if self.kind == "lora" else self.path)
        if not target.exists() or self.training():
            return True
        if self.kind == "lora":
            return target.is_dir() and not (target / WEIGHT_NAME).is_file()
        return not ((target / "config.json").is_file() or (target / "transformer" / "config.json").is_file())


@dataclasses.dataclass
class Grid:
    rows: list[str] = dataclasses.field(default_factory=list)  # row names shown side by side
    prompts: int = 4
    path: str = ""


@dataclasses.dataclass
class Plots:
    quality_vs_nfe: str = ""  # PNG: FD against NFE for every generated row
    training_curves: str = ""  # PNG: validation FD-clip vs generator updates of rows with a run_dir


@dataclasses.dataclass
class Intervals:
    """Paired bootstrap intervals of every row's gaps to the rows named in ``against`` (w2svd.eval.intervals)."""

    against: list[str] = dataclasses.field(default_factory=list)  # e.g. [base-28, w2svd-4 (shipped)]; []: off
    resamples: int = 1000
    level: float = 0.95
    # folder for each measured row's per-pair features, so that a row kept by `reuse` still gets intervals;
    # "": only the rows measured in this run get them
    cache: str = ""

    def validate(self) -> None:
        if self.resamples < 100 or not 0.5 < self.level < 1:
            raise ConfigError(
                f"intervals.resamples={self.resamples} must be >= 100 and intervals.level={self.level} in (0.5, 1)"
            )


@dataclasses.dataclass
class BenchmarkConfig:
    rows: list[Row]
    base: str = "embedded"
    reference: str = ""  # row whose times define the speed-ups (e.g. the 28-step base)
    n: int = 256
    # the evaluation pairs (prompts and seeds): the default is the fixed held-out set every report uses; another
    # value draws fresh pairs of the same held-out attribute combinations, a confirmation set no run was chosen on
    heldout_seed: int = HELDOUT_SEED
    batch_size: int = 32
    threads: int = 0
    title: str = "Benchmark"
    command: str = ""  # the command that reproduces the table, printed above it
    out_md: str = "docs/benchmark.md"
    out_json: str = "docs/benchmark.json"
    grid: Grid = dataclasses.field(default_factory=Grid)
    plots: Plots = dataclasses.field(default_factory=Plots)
    # rows of out_json to keep instead of measuring again (the table marks them 'earlier run'): "none"; "gone":
    # rows whose weights no longer exist; "unchanged": those and every row whose weights are not newer than out_json
    # (sweeps scored as their runs finish, with no change to the sampling code in between)
    reuse: str = "none"
    remeasure: list[str] = dataclasses.field(default_factory=list)  # rows measured again even if `reuse` keeps them
    intervals: Intervals = dataclasses.field(default_factory=Intervals)

    def validate(self) -> None:
        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise ConfigError(f"row names must be unique, got {names}")
        if self.reuse not in ("none", "gone", "unchanged"):
            raise ConfigError(f"reuse={self.reuse!r} must be 'none', 'gone' or 'unchanged'")
        if self.reference and self.reference not in names:
            raise ConfigError(f"reference={self.reference!r} is not a row name; rows: {names}")
        unknown = [a for a in self.remeasure if a not in names]
        if unknown:
            raise ConfigError(f"remeasure names {unknown}, which are not row names; rows: {names}")
        unknown = [a for a in self.intervals.against if a not in names]
        if unknown:
            raise ConfigError(f"intervals.against names {unknown}, which are not row names; rows: {names}")


class TimedGenerator:
    """Wraps one row's sampler as a metrics.GenerateFn, adding up denoising and total seconds."""

    def __init__(self, gen: VideoGenerator | None, row: Row) -> None:
        self.gen, self.row = gen, row
        self.denoise = self.total = 0.0
        self.videos = 0
        self.nfe = 0
        self.cfg_scale: float | None = None  # the classifier-free guidance the base rows sampled with

    def __call__(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        steps = self.row.steps or None
        if self.row.kind in ("lora", "transformer"):
            res = self.gen.few_step(prompts, seeds, steps=steps)
        else:
            res = self.gen.baseline(prompts, seeds, steps=steps, cfg_scale=self.row.cfg_scale)
            self.cfg_scale = res.cfg_scale
        self.denoise += res.denoise_seconds
        self.total += res.total_seconds
        self.videos += len(prompts)
        self.nfe = res.nfe
        return res.frames


def training_info(run_dir: str) -> dict[str, Any]:
    """Training steps and wall time of a run, from its exported generator metadata and train_time.json."""
    if not run_dir:
        return {}
    info: dict[str, Any] = {}
    for meta in (Path(run_dir) / "w2svd_lora.json", Path(run_dir) / "transformer" / GENERATOR_META):
        if meta.is_file():
            info["training_steps"] = GeneratorMeta.read_json(meta).training_steps
    timing = Path(run_dir) / "train_time.json"
    if timing.is_file():
        info["training_seconds"] = json.loads(timing.read_text()).get("seconds")
    return info


def reusable_rows(cfg: BenchmarkConfig) -> dict[str, dict[str, Any]]:
    """The rows of ``cfg.out_json`` (same n) that ``cfg.reuse`` keeps, by name; rows named in ``cfg.remeasure`` are
    measured again whatever ``reuse`` says."""
    path = Path(cfg.out_json)
    if cfg.reuse == "none" or not path.is_file():
        return {}
    report = json.loads(path.read_text())
    if report.get("n") != cfg.n or report.get("heldout_seed", HELDOUT_SEED) != cfg.heldout_seed:
        return {}
    rows = {r.name: r for r in cfg.rows}
    kept = {}
    for entry in report["rows"]:
        row = rows.get(entry["name"])
        if row is None or entry.get("missing") or entry.get("kind") != row.kind or row.name in cfg.remeasure:
            continue
        weights = lora_file(row.lora) if row.kind == "lora" else Path(row.path) if row.kind == "transformer" else None
        gone = weights is not None and not weights.exists()
        unchanged = weights is None or (weights.exists() and weights.stat().st_mtime <= path.stat().st_mtime)
        if not (gone or (cfg.reuse == "unchanged" and unchanged)):
            continue
        kept[entry["name"]] = {k: v for k, v in entry.items() if k != "reused"}
    return kept


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    nets = load_feature_nets()
    examples = heldout_examples(cfg.n, seed=cfg.heldout_seed)
    gen = None
    if any(r.kind != "real" for r in cfg.rows):
        gen = VideoGenerator.from_pretrained(cfg.base)
    reference_clips = metrics.render_examples(metrics.reference_examples(examples))
    reference = metrics.embed(reference_clips, nets)
    real_temporal = summarise(reference_clips)  # what motion and flicker should be, for these prompts
    results, samples = [], {}
    per_clip: dict[str, PerClip] = {}  # rows with per-pair features, for the intervals
    ref_pairs = PerClip.from_embedding(reference)
    earlier = reusable_rows(cfg)
    for row in cfg.rows:
        if row.name in earlier:
            results.append({**earlier[row.name], "reused": True})
            cached = cached_features(cfg, row.name, earlier[row.name], ref_pairs)
            if cached is not None:
                per_clip[row.name] = cached
            print(f"{row.name}: kept from {cfg.out_json}" + (" (with its per-pair features)" if cached else ""))
            continue
        if row.missing():
            results.append({"name": row.name, "kind": row.kind, "missing": True, "train": row.train})
            state = "still training" if row.training() else "not trained yet"
            print(f"{row.name}: {state}, skipped ({row.train})")
            continue
        if row.kind == "real":
            fn: metrics.GenerateFn = metrics.real_generator(examples)
            timed = None
        else:
            if row.kind == "lora":
                gen.load_lora(row.lora)
            elif row.kind == "transformer":
                gen.load_transformer(row.path)
            timed = TimedGenerator(gen, row)
            fn = timed
        start = time.perf_counter()
        clips = metrics.generate_clips(fn, examples, cfg.batch_size)
        scores, per_clip[row.name] = score(clips, examples, reference, nets)
        if cfg.intervals.cache:
            per_clip[row.name].save(feature_path(cfg, row.name), feature_meta(cfg, row.name, scores))
        entry: dict[str, Any] = {"name": row.name, "kind": row.kind, **scores, **training_info(row.run_dir)}
        if timed is not None:
            entry.update(
                nfe=timed.nfe,
                **({"cfg_scale": timed.cfg_scale} if timed.cfg_scale is not None else {}),
                denoise_s_per_video=timed.denoise / timed.videos,
                total_s_per_video=timed.total / timed.videos,
            )
        entry["wall_s"] = time.perf_counter() - start
        results.append(entry)
        samples[row.name] = clips[: cfg.grid.prompts]
        print(f"{row.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float)))
    ref = next((r for r in results if r["name"] == cfg.reference), None)
    for r in results:
        if "temporal/motion" in r:
            r["motion_vs_real"] = ratio(r["temporal/motion"], real_temporal["motion"])
            r["flicker_vs_real"] = ratio(r["temporal/flicker"], real_temporal["flicker"])
        if ref is None:
            continue
        if "temporal/motion" in r:
            r["motion_vs_base"] = ratio(r["temporal/motion"], ref["temporal/motion"])
            r["flicker_vs_base"] = ratio(r["temporal/flicker"], ref["temporal/flicker"])
        if "denoise_s_per_video" in r and not r.get("reused"):  # a kept row keeps the speed-ups of its own run
            r["speedup_denoise"] = ref["denoise_s_per_video"] / r["denoise_s_per_video"]
            r["speedup_total"] = ref["total_s_per_video"] / r["total_s_per_video"]
    add_intervals(cfg, results, per_clip, ref_pairs)
    for row, r in zip(cfg.rows, results):
        points = curve_points(row.run_dir)
        if points:  # kept in the JSON so the curve outlives the run folder (a reused row keeps its saved one)
            r["curve"] = points
    report = {
        "title": cfg.title,
        "command": cfg.command,
        "n": cfg.n,
        "heldout_seed": cfg.heldout_seed,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "reference": cfg.reference,
        "intervals": dataclasses.asdict(cfg.intervals) if cfg.intervals.against else None,
        "real_temporal": real_temporal,
        "rows": results,
    }
    write_outputs(cfg, report, samples, examples)
    write_plots(cfg, report)
    return report


def write_plots(cfg: BenchmarkConfig, report: dict[str, Any]) -> None:
    from w2svd import plots

    if cfg.plots.quality_vs_nfe:
        plots.quality_vs_nfe(report["rows"], cfg.plots.quality_vs_nfe)
    if cfg.plots.training_curves:
        saved = {r["name"]: r.get("curve") for r in report["rows"]}
        curves = {r.name: curve_points(r.run_dir) or saved.get(r.name) for r in cfg.rows if r.run_dir}
        curves = {name: points for name, points in curves.items() if points}
        if curves:
            plots.training_curves(curves, cfg.plots.training_curves)


CURVE_KEYS = ("step", "generator_updates", "fd_clip", "fd_frame", "adherence/motion")


def curve_points(run_dir: str) -> list[dict[str, float]]:
    """A run's validation curve (the keys the plot and the stability study read), [] without one."""
    from w2svd.methods.validation import read_metrics

    if not run_dir:
        return []
    return [{k: p[k] for k in CURVE_KEYS if k in p} for p in read_metrics(run_dir)]


def score(clips: np.ndarray, examples, reference: metrics.Embedding, nets) -> tuple[dict[str, float], PerClip]:
    """FD against the reference real clips (same prompts, other render seeds) and prompt adherence, with the
    per-pair features the figures come from."""
    gen_emb = metrics.embed(clips, nets)
    adh = metrics.adherence(gen_emb, examples, nets)
    regions = region_figures(clips, [e.portrait.label("motion") for e in examples])
    figures = {
        "fd_frame": metrics.fd_frame(gen_emb, reference, nets),
        "fd_clip": metrics.fd_clip(gen_emb, reference, nets),
        **{f"adherence/{k}": v for k, v in adh.items()},
        "motion_region": float(regions["right"].mean()),  # visible and in the prompted face region
        **{f"temporal/{k}": v for k, v in summarise(clips).items()},
    }
    return figures, PerClip.from_embedding(gen_emb, regions["right"])


def feature_path(cfg: BenchmarkConfig, name: str) -> Path:
    """Where a row's per-pair features are cached: one file per row, under a folder named after out_json."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]  # two names that slug alike stay apart
    return Path(cfg.intervals.cache) / Path(cfg.out_json).stem / f"{slug}-{digest}.npz"


def feature_meta(cfg: BenchmarkConfig, name: str, scores: dict[str, Any]) -> dict[str, Any]:
    """What cached features must match to stand for a row: the pairs and the row's measured FDs."""
    return {
        "name": name,
        "n": cfg.n,
        "heldout_seed": cfg.heldout_seed,
        "fd_clip": round(float(scores["fd_clip"]), 6),
        "fd_frame": round(float(scores["fd_frame"]), 6),
    }


def cached_features(cfg: BenchmarkConfig, name: str, entry: dict[str, Any], ref_pairs: PerClip) -> PerClip | None:
    """A kept row's cached features, if they are the ones its kept figures were computed from (checked again by
    recomputing its FDs from them), else None."""
    if not cfg.intervals.cache or "fd_clip" not in entry or "fd_frame" not in entry:
        return None
    found = PerClip.load(feature_path(cfg, name), feature_meta(cfg, name, entry))
    if found is None or len(found) != len(ref_pairs):
        return None
    again = found.figures(ref_pairs)
    same = all(
        np.isclose(again[k], entry[k], rtol=1e-4) for k in ("fd_clip", "fd_frame", "motion_region") if k in entry
    )
    return found if same else None


def cached_draws(
    cfg: BenchmarkConfig, entry: dict[str, Any], row: PerClip, ref_pairs: PerClip
) -> dict[str, np.ndarray]:
    """The row's resampled figures (intervals.resampled), from the cache next to its features when they were drawn
    from the same figures with the same number of resamples, else drawn now (and cached, with ``intervals.cache``).
    Resampling is most of an eval pass's time when nearly every row is kept."""
    spec = cfg.intervals
    if not spec.cache or "fd_clip" not in entry or "fd_frame" not in entry:
        return intervals.resampled(row, ref_pairs, spec.resamples)
    path = feature_path(cfg, entry["name"]).with_suffix(f".draws{spec.resamples}.npz")
    meta = json.dumps(
        {
            **feature_meta(cfg, entry["name"], entry),
            "motion_region": round(float(row.right.mean()), 6),
            "resamples": spec.resamples,
        },
        sort_keys=True,
    )
    try:
        with np.load(path, allow_pickle=False) as z:
            draws = {k: z[k] for k in intervals.METRICS}
            if str(z["meta"]) == meta and all(v.shape == (spec.resamples,) for v in draws.values()):
                return draws
    except (OSError, ValueError, KeyError):
        pass
    draws = intervals.resampled(row, ref_pairs, spec.resamples)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(meta), **draws)
    tmp.replace(path)
    return draws


def add_intervals(
    cfg: BenchmarkConfig, results: list[dict[str, Any]], per_clip: dict[str, PerClip], ref_pairs: PerClip
) -> None:
    """entry["intervals"][against] = the paired bootstrap gaps of the row to that row (both need features)."""
    spec, memo = cfg.intervals, {}
    entries = {r["name"]: r for r in results}

    def figures(name: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:  # each row resampled once
        if name not in memo:
            memo[name] = (
                per_clip[name].figures(ref_pairs),
                cached_draws(cfg, entries[name], per_clip[name], ref_pairs),
            )
        return memo[name]

    for r in results:
        r.pop("intervals", None)  # a kept row's intervals are recomputed or dropped, never carried over stale
        if r["name"] not in per_clip or r.get("kind") == "real":
            continue
        gaps = {}
        for other in spec.against:
            if other != r["name"] and other in per_clip:
                (full_a, draws_a), (full_b, draws_b) = figures(r["name"]), figures(other)
                gaps[other] = intervals.gaps(full_a, full_b, draws_a, draws_b, spec.level)
        if gaps:
            r["intervals"] = gaps


COLUMNS = [
    ("name", "method", "{}"),
    ("nfe", "NFE", "{}"),
    ("cfg_scale", "CFG", "{:g}"),
    ("fd_frame", "FD-frame", "{:.2f}"),
    ("fd_clip", "FD-clip", "{:.2f}"),
    ("adherence/appearance_mean", "attributes", "{:.1%}"),
    ("adherence/hair_colour", "hair colour", "{:.1%}"),
    ("adherence/background", "background", "{:.1%}"),
    ("adherence/motion", "motion", "{:.1%}"),
    ("motion_region", "motion in region", "{:.1%}"),
    ("motion_vs_real", "motion (x real)", "{:.2f}"),
    ("motion_vs_base", "motion (x base)", "{:.2f}"),
    ("temporal/face_share", "face share", "{:.1%}"),
    ("flicker_vs_base", "flicker (x base)", "{:.2f}"),
    ("denoise_s_per_video", "denoise s/video", "{:.3f}"),
    ("total_s_per_video", "total s/video", "{:.3f}"),
    ("speedup_denoise", "speed-up (denoise)", "{:.2f}x"),
    ("speedup_total", "speed-up (total)", "{:.2f}x"),
    ("training_steps", "train steps", "{}"),
    ("training_seconds", "train time (s)", "{:.0f}"),
]


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = [f"# {report['title']}", ""]
    if report["command"]:
        lines += ["Reproduce with:", "", "```bash", report["command"], "```", ""]
    missing = [r for r in rows if r.get("missing")]
    rows = [r for r in rows if not r.get("missing")]
    seed = report.get("heldout_seed", HELDOUT_SEED)
    fresh = "" if seed == HELDOUT_SEED else f" drawn with heldout_seed {seed} (not the fixed set of every other report)"
    lines += [
        f"{report['n']} held-out (prompt, seed) pairs{fresh}; FD against real clips of the same prompts with other "
        f"render seeds; machine: {report['machine']}. Speed-ups, motion (x base) and flicker (x base) are relative to "
        f"`{report['reference']}`, measured in this run; motion (x real) to the real clips of the same prompts "
        "(1.00 is right). Motion is the mean grey-level change between consecutive frames, face share its part in "
        "the eye and mouth bands, flicker the mean second difference (w2svd.eval.temporal).",
        "",
        "| " + " | ".join(c[1] for c in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [c[2].format(r[c[0]]) if r.get(c[0]) is not None else "" for c in cols]
        cells[0] += " (earlier run)" if r.get("reused") else ""
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("reused") for r in rows):
        lines += [
            "",
            "Rows marked *(earlier run)* are kept from an earlier run of this command (`reuse` in the config: their "
            "weights are no longer on disk, or had not changed), with that run's sampling code and speed-ups; "
            "columns they lack were added since.",
        ]
    extra = sorted({k for r in rows for k in r if k.startswith("adherence/") and k not in {c[0] for c in cols}})
    if extra:
        lines += ["", "Per-attribute adherence:", "", "| method | " + " | ".join(k.split("/")[1] for k in extra) + " |"]
        lines.append("|" + "---|" * (len(extra) + 1))
        for r in rows:
            lines.append(f"| {r['name']} | " + " | ".join(f"{r[k]:.1%}" for k in extra) + " |")
    lines += interval_lines(report, rows)
    if missing:
        lines += ["", "Rows not trained yet when this table was made (train them, then re-run the command):", ""]
        lines += [f"- {r['name']}: `{r['train']}`" for r in missing]
    return "\n".join(lines) + "\n"


def interval_lines(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The paired bootstrap table: one line per (row, row it is compared with)."""
    spec = report.get("intervals")
    pairs = [(r, other, gaps) for r in rows for other, gaps in r.get("intervals", {}).items()]
    if not spec:
        return []

    def cell(gap: dict[str, float], scale: float, fmt: str, higher: bool) -> str:
        g, lo, hi = (gap[k] * scale for k in ("gap", "low", "high"))
        return f"{g:{fmt}} [{lo:{fmt}}, {hi:{fmt}}] {verdict(gap, higher)}"

    level = f"{spec['level']:.0%}"
    lines = (
        []
        if not pairs
        else [
            "",
            f"Paired bootstrap gaps ({spec['resamples']} resamples of the {report['n']} pairs, {level} intervals; "
            "w2svd.eval.intervals): the row minus the one it is compared with, so a negative FD gap and a positive "
            "region gap favour the row. *within noise*: the interval holds 0, so the gap is not told apart from the "
            "draw of pairs (the intervals do not cover training's run-to-run swing).",
            "",
            "| method | against | FD-clip gap | FD-frame gap | motion in region gap (points) |",
            "|---|---|---|---|---|",
        ]
    )
    for r, other, gaps in pairs:
        lines.append(
            f"| {r['name']} | {other} | {cell(gaps['fd_clip'], 1, '+.1f', False)} | "
            f"{cell(gaps['fd_frame'], 1, '+.1f', False)} | {cell(gaps['motion_region'], 100, '+.1f', True)} |"
        )
    absent = [
        r["name"] for r in rows if "intervals" not in r and r.get("kind") != "real" and r["name"] not in spec["against"]
    ]
    if absent:
        lines += [
            "",
            "No intervals for: " + "; ".join(absent) + " (kept from an earlier run without matching per-pair "
            "features, here or in the rows compared with; `--remeasure NAME` measures a row again).",
        ]
    return lines


def write_outputs(cfg: BenchmarkConfig, report: dict[str, Any], samples: dict[str, np.ndarray], examples) -> None:
    for path, text in ((cfg.out_md, markdown(report)), (cfg.out_json, json.dumps(report, indent=1))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    if cfg.grid.path and any(name in samples for name in cfg.grid.rows):  # kept rows bring no clips
        from PIL import Image, ImageDraw

        from w2svd.data.grid import grid_image

        panels = []
        for name in [n for n in cfg.grid.rows if n in samples]:
            img = grid_image(samples[name], zoom=2)
            label = Image.new("RGB", (img.width, 16), "white")
            ImageDraw.Draw(label).text((2, 2), name, fill="black")
            panels += [label, img]
        out = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)), "white")
        y = 0
        for p in panels:
            out.paste(p, (0, y))
            y += p.height
        Path(cfg.grid.path).parent.mkdir(parents=True, exist_ok=True)
        out.save(cfg.grid.path)
