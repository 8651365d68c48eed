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
# 2026-12-04: 189 min of compute in 8 runs, 90-103 min wall, about 2 min of compute per
# minute of wall). A pooled-head student costs about 5.3 min of distillation (1.7/0.9/1.7/1.1
# min per student and 10 seeds on sentiment/ERC/GoEmotions/VADER) plus about 1.3 min of
# evaluation over the four tasks; the newer losses are at most about 3x the exact OT loss's
# ~1 ms per step at B = 1024 (bench/ot_loss.py --only-new, 2026-12-06), a small share of a
# step, so each newer student costs about what `ot` does. Issue 20's study was estimated
# at 145 min (controls +13 min of compute, confirmation runs about 97 min of compute, three
# sensitivity variants cut). Issue 21 (2026-12-06) adds seven students to every comparison
# run (wkl, ot-kl, ot-learned, ot-head, dsfl, sord, uld): about 7 x 6.6 = 46 min of compute,
# +23 min wall, 168 min. To stay within about 2.5 h the sensitivity runs were cut, old
# variants first (the order the claims issue sets): ot-lr3e-4, ot-t2, ot-sinkhorn (about
# 15 min of compute on GoEmotions alone, its solver still 300-500x the exact loss), ot-wuniform,
# ot-bias and ot-local, about 40 min of compute; then the newer students' knobs other than
# ot-kl's lam (wkl's schedule, dsfl's sharpening, sord's tau, ot-head's kappa). The
# sensitivity runs now train ot, ot-kl, ot-kl-lam0.25 and ot-kl-lam0.75 (about 14 min of
# compute); a chosen lam adds ot-kl and its variant to the confirmation runs (about 6 min of
# compute at most). Estimate: about 152 min wall in all. Never cut: the controls, the
# confirmation runs and the newer students of the comparison runs.
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
