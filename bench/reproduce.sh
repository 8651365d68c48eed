#!/usr/bin/env bash
# Regenerate the study behind docs/results.md (issues 14 and 20): four tasks, each with a
# comparison run (ten seeds, geometry controls included) and a sensitivity run (five seeds);
# then the settings chosen on validation by the rule each config declares (`study:`) are
# written as confirmation configs and rerun on ten fresh seeds; then the page.
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
# threads. Then bench/make_results.py --write-confirm-configs writes runs/confirm-configs/
# study-<task>-confirm.yaml (the chosen setting is only known once the sensitivity runs are
# read), the same lanes run them into runs/study-<task>-confirm/, and bench/make_results.py
# writes docs/results.md and docs/results/ from all the run directories. Logs:
# runs/logs/study-<task>.log.
#
# Estimated wall time on 2 cores, LANES=2, from the last study (docs/results.md of
# 2026-12-04: 189 min of compute in 8 runs, 90-103 min wall): the two geometry controls add
# about 13 min of compute (distill about 1.7/0.9/1.7/1.1 min per student and 10 seeds on
# sentiment/ERC/GoEmotions/VADER, evaluation about 18 % more models); the confirmation runs,
# which retrain teachers on their fresh seeds, about 32 + 30 + 20 + 15 = 97 min of compute,
# about 50 min wall in two lanes after the first phase. That is about 101 + 50 = 151 min: over
# the 2.5 h budget, so the sensitivity runs drop three variants (ot-scratch, ot-lr3e-3, ot-p2,
# which lowered val SD on no task last time), about 10 min of compute, for about 145 min in
# all. Never cut: the controls and the confirmation runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${KNOT_DATA:-../shared/datasets}}"
LANES="${LANES:-2}"
PY="${PYTHON:-python}"
KNOT="${KNOT:-knot}"
STUDY=(erc sentiment goemotions vader erc-sensitivity sentiment-sensitivity goemotions-sensitivity vader-sensitivity)
CONFIRM_DIR=runs/confirm-configs
export HF_HUB_OFFLINE=1
export KNOT_CACHE="${KNOT_CACHE:-runs/study-features}"
mkdir -p runs/logs
started=$(date +%s)
claims=$(mktemp -d)
trap 'rm -rf "$claims"' EXIT

run() {  # run CONFIG: one study config, its log in runs/logs/
  local cfg="$1" t
  t=$(basename "$cfg" .yaml)
  echo "[$(date +%T)] start $cfg (log: runs/logs/study-$t.log)"
  if ! "$KNOT" run "$cfg" --data-root "$DATA" >> "runs/logs/study-$t.log" 2>&1; then
    echo "[$(date +%T)] FAILED $cfg (see runs/logs/study-$t.log)" >&2
    return 1
  fi
  echo "[$(date +%T)] done  $cfg"
}

lane() {  # take the next unclaimed config until none is left (mkdir is the atomic claim)
  local c
  for c in "${CONFIGS[@]}"; do
    if mkdir "$claims/$(basename "$c" .yaml)" 2> /dev/null; then
      run "$c" || return 1
    fi
  done
}

lanes() {  # run every config of CONFIGS in LANES lanes
  if [ "$LANES" = "1" ]; then
    lane || { echo "a study run failed (see runs/logs/)" >&2; exit 1; }
  else
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    local pids=() status=0 p
    for _ in $(seq "$LANES"); do lane & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    [ "$status" = 0 ] || { echo "a study run failed (see runs/logs/)" >&2; exit 1; }
  fi
}

SENS=()
CONFIGS=()
for t in "${STUDY[@]}"; do CONFIGS+=("configs/study/$t.yaml"); done
for t in sentiment erc goemotions vader; do SENS+=("runs/study-$t-sensitivity"); done
lanes
echo "[$(date +%T)] comparison and sensitivity runs done; writing the confirmation configs"
"$PY" bench/make_results.py runs/study-sentiment runs/study-erc runs/study-goemotions runs/study-vader \
  --sensitivity "${SENS[@]}" --write-confirm-configs "$CONFIRM_DIR"
CONFIGS=()
for t in sentiment erc goemotions vader; do CONFIGS+=("$CONFIRM_DIR/study-$t-confirm.yaml"); done
lanes

minutes=$(( ($(date +%s) - started + 59) / 60 ))
load=$(cut -d' ' -f1-3 /proc/loadavg 2> /dev/null || echo unknown)
echo "[$(date +%T)] all runs done in ${minutes} min; writing docs/results.md"
"$PY" bench/make_results.py runs/study-sentiment runs/study-erc runs/study-goemotions runs/study-vader \
  --sensitivity "${SENS[@]}" \
  --confirm runs/study-sentiment-confirm runs/study-erc-confirm runs/study-goemotions-confirm runs/study-vader-confirm \
  --out docs/results.md \
  --wall "${minutes} min for this run of bench/reproduce.sh (LANES=${LANES}; load average ${load} at its end)"
