#!/usr/bin/env bash
# Regenerate the study behind docs/results.md (issue 8): three tasks x three seeds, then the page.
#
#   bench/reproduce.sh [DATA_ROOT]        # default: $KNOT_DATA, else ../shared/datasets
#
# Runs configs/study/{sentiment,erc,goemotions}.yaml into runs/study-*/ with `knot run`
# (finished stages are skipped, so an interrupted study resumes where it stopped), in two
# lanes of one torch thread each: sentiment beside erc -> goemotions. On 2 CPU cores this
# is faster than one lane with two threads. Set LANES=1 to run the three one after another
# with torch's default threads. Then bench/make_results.py writes docs/results.md and
# docs/results/ from the run directories.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${KNOT_DATA:-../shared/datasets}}"
LANES="${LANES:-2}"
PY="${PYTHON:-python}"
KNOT="${KNOT:-knot}"
export HF_HUB_OFFLINE=1
mkdir -p runs/logs
start=$(date +%s)

run() {  # run CONFIG: one task, its log in runs/logs/
  local name; name=$(basename "$1" .yaml)
  echo "[$(date +%T)] start $1 (log: runs/logs/study-$name.log)"
  if ! "$KNOT" run "$1" --data-root "$DATA" >> "runs/logs/study-$name.log" 2>&1; then
    echo "[$(date +%T)] FAILED $1 (see runs/logs/study-$name.log)" >&2
    return 1
  fi
  echo "[$(date +%T)] done  $1"
}

if [ "$LANES" = "2" ]; then
  ( export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; run configs/study/sentiment.yaml ) &
  lane_a=$!
  ( export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; run configs/study/erc.yaml && run configs/study/goemotions.yaml ) &
  lane_b=$!
  status=0
  wait "$lane_a" || status=$?
  wait "$lane_b" || status=$?
  [ "$status" = 0 ] || { echo "a study run failed (see runs/logs/)" >&2; exit "$status"; }
else
  for c in sentiment erc goemotions; do run "configs/study/$c.yaml"; done
fi

wall=$(( $(date +%s) - start ))
"$PY" bench/make_results.py runs/study-sentiment runs/study-erc runs/study-goemotions \
  --out docs/results.md --wall "$((wall / 60)) min $((wall % 60)) s for this invocation of bench/reproduce.sh (stages already finished are skipped, so a resumed study shows less)"
