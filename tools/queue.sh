#!/usr/bin/env bash
# Run a queue of training runs one after another, each niced on one torch thread, with a log and wall time each.
#
#   WT=/path/to/worktree bash tools/queue.sh QUEUE.txt [LOGDIR]
#
# QUEUE.txt: one run per line, NAME<TAB>ARGS for training/run.py (lines starting with # are skipped). Each run is
#   python training/run.py ARGS output_dir=runs/sweep/NAME threads=1 --no-progress
# in $WT (default: this checkout), so a queue started from a worktree of a fixed commit is not changed by later
# commits. A run whose folder holds checkpoints resumes from the latest one (run.py's own resume), so re-running a
# stopped queue continues where it stopped. Per run: LOGDIR/NAME.log (appended to, so a resumed run keeps the
# earlier legs' lines); one line per finished run in QUEUE.tsv next to QUEUE.txt: NAME, exit status, wall seconds,
# end time (UTC), command.
set -u
queue=${1:?usage: WT=worktree bash tools/queue.sh QUEUE.txt [LOGDIR]}
[ -f "$queue" ] || { echo "queue file not found: $queue" >&2; exit 2; }
wt=${WT:-$(cd "$(dirname "$0")/.." && pwd)}
logdir=${2:-$(dirname "$queue")/logs}
mkdir -p "$logdir"
py=${PYTHON:-python}
queue=$(cd "$(dirname "$queue")" && pwd)/$(basename "$queue")  # absolute: the loop runs in $wt
tsv=${queue%.txt}.tsv
logdir=$(cd "$logdir" && pwd)
cd "$wt" || exit 2
while IFS=$'\t' read -r name args; do
  case "$name" in ''|'#'*) continue ;; esac
  cmd="$py training/run.py $args output_dir=runs/sweep/$name threads=1 --no-progress"
  t0=$(date +%s)
  echo "[$(date -u +%FT%T+00:00)] $name: $cmd"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 nice -n 5 $cmd >>"$logdir/$name.log" 2>&1
  rc=$?
  end=$(date -u +%FT%T+00:00)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$end" "$cmd (worktree $(git rev-parse --short HEAD))" >>"$tsv"
  echo "[$end] $name: exit $rc"
done <"$queue"
