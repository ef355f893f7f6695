#!/usr/bin/env bash
# The prepared GPU check of issue 12, for a lent GPU machine (see README, "Fast path and the device script").
#
#   bash bench/device/check.sh OUTDIR            # on the GPU machine, from the repository root (< 8 minutes)
#   bash bench/device/check.sh --dry-run OUTDIR  # anywhere: the same steps, tiny and on the CPU (tests use it)
#
# Steps, each under its own time limit; whatever finished is in OUTDIR even when a later step fails:
#   1. env.json        python, torch, CUDA, GPU, TF32/cuDNN flags; missing Python packages installed from .whl/
#                      if the tree carries any (the machine has no network)
#   2. equality.json   fast path = reference path on this device (python -m intraq.fast.device_check --strict:
#                      TF32 off for both, so the CPU tests' tolerances apply)
#   3. <gpu>.json      the CUDA throughput benchmark (pytest bench -k throughput): the official-run cost first,
#                      then reference / fast / stacked throughput of ResNet-20 and ResNet-18
#   4. pipeline.json   a tiny smoke case through `intraq run --fast` (bench/device/pipeline_check.py): the wiring
#                      around the fast loops (batch files, capture, checkpoints, the record's path fields)
#   summary.txt        one line per step: ok / failed (exit code) / timed out, and its seconds
# CHECK_STEPS (comma list, default all) runs some of them, e.g. CHECK_STEPS=env,equality,pipeline: the steps that
# time nothing, which bench/device/session.sh runs beside the teacher. EQUALITY_SECONDS (default 120) is the
# equality step's limit (its five checks at 300 steps take longer on an H200; those finished are kept).
# Exit status: 0 if every step passed, else 1.
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ $# -ne 1 ]]; then
  echo "usage: bash bench/device/check.sh [--dry-run] OUTDIR" >&2
  exit 2
fi
OUT="$1"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
. "$(dirname "$0")/args.sh"
enter_repo
: > "$OUT/summary.txt"
STATUS=0

STEPS=",${CHECK_STEPS:-install,env,equality,official_run,throughput,pipeline},"

# run_step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the outcome, never abort.
# A step not in CHECK_STEPS is skipped without a line.
run_step() {
  local name="$1" limit="$2"; shift 2
  [[ "$STEPS" == *",$name,"* ]] || return 0
  local start rc=0
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - start ))
  if [[ $rc -eq 0 ]]; then
    echo "$name ok ${took}s" >> "$OUT/summary.txt"
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "$name timed-out ${took}s (limit ${limit}s)" >> "$OUT/summary.txt"; STATUS=1
  else
    echo "$name failed rc=$rc ${took}s" >> "$OUT/summary.txt"; STATUS=1
  fi
  tail -n 3 "$OUT/$name.log" || true
}

if [[ -d .whl ]] && compgen -G ".whl/*.whl" > /dev/null; then
  run_step install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

run_step env 30 "$PY" -c "
import json, platform, sys, torch
from intraq.fast.settings import NumericSettings, current_numeric_settings
NumericSettings().apply()
info = {'python': sys.version, 'torch': torch.__version__, 'cuda': torch.version.cuda,
        'cuda_available': torch.cuda.is_available(), 'host': platform.node(),
        'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        'numeric': current_numeric_settings()}
json.dump(info, open('$OUT/env.json', 'w'), indent=2); print(info)
"

if [[ $DRY -eq 1 ]]; then
  run_step equality 300 "$PY" -m intraq.fast.device_check --out "$OUT/equality.json" --device cpu \
    --steps 6 --iterations 2 --only finetune,stacked,calibration --calibration-steps 4 --small
  INTRAQ_THROUGHPUT_DIR="$OUT" run_step throughput 300 "$PY" -m pytest -q -p no:cacheprovider \
    bench/bench_throughput.py -k "official_cifar10_run" --device cpu
  run_step pipeline 300 "$PY" bench/device/pipeline_check.py --out "$OUT" --device cpu --fast none
else
  run_step equality "${EQUALITY_SECONDS:-120}" "$PY" -m intraq.fast.device_check --out "$OUT/equality.json" --device cuda \
    --steps 300 --iterations 200 --only finetune,calibration,stacked,generation,finetune_compile --strict
  # The key number first (official-run cost), then the per-path throughput, into one merged record.
  INTRAQ_THROUGHPUT_DIR="$OUT" INTRAQ_BENCH_STACKED="${INTRAQ_BENCH_STACKED:-1,8}" \
    INTRAQ_BENCH_PROCESSES="${INTRAQ_BENCH_PROCESSES:-2}" run_step official_run 180 "$PY" -m pytest -q \
    -p no:cacheprovider bench/bench_throughput.py -k "official_cifar10_run" --device cuda
  INTRAQ_THROUGHPUT_DIR="$OUT" INTRAQ_BENCH_STACKED="${INTRAQ_BENCH_STACKED:-1,8}" run_step throughput 120 \
    "$PY" -m pytest -q -p no:cacheprovider bench/bench_throughput.py \
    -k "throughput and not official and not compiled" --device cuda
  run_step pipeline 90 "$PY" bench/device/pipeline_check.py --out "$OUT" --device cuda
fi
cat "$OUT/summary.txt"
exit $STATUS
