#!/usr/bin/env bash
# Keep an unfinished training run in the repo so the next sitting (a fresh machine, no runs/) can resume it.
#
#   bash tools/stash_run.sh save NAME...     runs/sweep/NAME -> docs/experiments/resume/NAME
#   bash tools/stash_run.sh restore NAME...  docs/experiments/resume/NAME -> runs/sweep/NAME
#
# save keeps what a resume needs and the curves so far: config.yaml, config-history/, validation/metrics.jsonl,
# train_time.json, losses.jsonl, logs/ (tensorboard) and the latest checkpoint (about 7 MB for the embedded model), not the validation images or
# older checkpoints. After restore, re-run the run's queue line (tools/queue.sh) from a worktree of the commit that
# started it: training/run.py resumes from the checkpoint. Delete docs/experiments/resume/NAME once the run is done.
set -eu
cd "$(dirname "$0")/.."
mode=${1:?usage: bash tools/stash_run.sh save|restore NAME...}
shift
[ $# -gt 0 ] || { echo "name at least one run" >&2; exit 2; }
for name in "$@"; do
  src=runs/sweep/$name
  dst=docs/experiments/resume/$name
  case "$mode" in
    save)
      [ -d "$src/checkpoints" ] || { echo "$src has no checkpoints" >&2; exit 2; }
      latest=$(ls -d "$src"/checkpoints/checkpoint-* | sort | tail -n 1)
      rm -rf "$dst"
      mkdir -p "$dst/checkpoints" "$dst/validation"
      cp -r "$src/config.yaml" "$src/config-history" "$dst/"
      [ -f "$src/validation/metrics.jsonl" ] && cp "$src/validation/metrics.jsonl" "$dst/validation/"
      [ -f "$src/train_time.json" ] && cp "$src/train_time.json" "$dst/"
      [ -f "$src/losses.jsonl" ] && cp "$src/losses.jsonl" "$dst/"
      [ -d "$src/logs" ] && cp -r "$src/logs" "$dst/"  # tensorboard files: the loss curve of runs without losses.jsonl
      cp -r "$latest" "$dst/checkpoints/"
      echo "saved $name at $(basename "$latest") ($(du -sh "$dst" | cut -f1))"
      ;;
    restore)
      [ -d "$dst" ] || { echo "no stashed run $dst" >&2; exit 2; }
      [ -e "$src" ] && { echo "$src exists; move it away first" >&2; exit 2; }
      mkdir -p runs/sweep
      cp -r "$dst" "$src"
      echo "restored $name ($(ls "$src/checkpoints"))"
      ;;
    *) echo "mode must be save or restore, got $mode" >&2; exit 2 ;;
  esac
done
