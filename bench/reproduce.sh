#!/usr/bin/env bash
# Regenerate the study behind docs/results.md (issue 14): four tasks, each with a
# comparison run (ten seeds) and a sensitivity run (five seeds), then the page.
#
#   bench/reproduce.sh [DATA_ROOT]        # default: $KNOT_DATA, else ../shared/datasets
#
# Runs configs/study/{erc,sentiment,goemotions,vader}.yaml and their -sensitivity.yaml
# into runs/study-*/ with `knot run` (finished stages are skipped, so an interrupted study
# resumes where it stopped). Every run is in frozen-encoder mode and shares one feature
# cache, runs/study-features (KNOT_CACHE): each text is encoded once for the whole study.
# The comparisons are queued first, so a task's sensitivity run finds its texts cached. With
# LANES=2 (the default) two lanes of one torch thread each take the tasks in that order,
# each lane the next free task when it is done: on 2 CPU cores this is faster than one
# lane with two threads. LANES=1 runs them one after another with torch's default
# threads. Then bench/make_results.py writes docs/results.md and docs/results/ from the
# run directories. Logs: runs/logs/study-<task>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${KNOT_DATA:-../shared/datasets}}"
LANES="${LANES:-2}"
PY="${PYTHON:-python}"
KNOT="${KNOT:-knot}"
TASKS=(erc sentiment goemotions vader erc-sensitivity sentiment-sensitivity goemotions-sensitivity vader-sensitivity)
export HF_HUB_OFFLINE=1
export KNOT_CACHE="${KNOT_CACHE:-runs/study-features}"
mkdir -p runs/logs
started=$(date +%s)
claims=$(mktemp -d)
trap 'rm -rf "$claims"' EXIT

run() {  # run TASK: one study config, its log in runs/logs/
  local cfg="configs/study/$1.yaml"
  echo "[$(date +%T)] start $cfg (log: runs/logs/study-$1.log)"
  if ! "$KNOT" run "$cfg" --data-root "$DATA" >> "runs/logs/study-$1.log" 2>&1; then
    echo "[$(date +%T)] FAILED $cfg (see runs/logs/study-$1.log)" >&2
    return 1
  fi
  echo "[$(date +%T)] done  $cfg"
}

lane() {  # take the next unclaimed task until none is left (mkdir is the atomic claim)
  local t
  for t in "${TASKS[@]}"; do
    if mkdir "$claims/$t" 2> /dev/null; then
      run "$t" || return 1
    fi
  done
}

if [ "$LANES" = "1" ]; then
  lane
else
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  pids=()
  for _ in $(seq "$LANES"); do lane & pids+=($!); done
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  [ "$status" = 0 ] || { echo "a study run failed (see runs/logs/)" >&2; exit 1; }
fi

minutes=$(( ($(date +%s) - started + 59) / 60 ))
load=$(cut -d' ' -f1-3 /proc/loadavg 2> /dev/null || echo unknown)
echo "[$(date +%T)] all runs done in ${minutes} min; writing docs/results.md"
"$PY" bench/make_results.py runs/study-sentiment runs/study-erc runs/study-goemotions runs/study-vader \
  --sensitivity runs/study-sentiment-sensitivity runs/study-erc-sensitivity runs/study-goemotions-sensitivity \
  runs/study-vader-sensitivity --out docs/results.md \
  --wall "${minutes} min for this run of bench/reproduce.sh (LANES=${LANES}; load average ${load} at its end)"
