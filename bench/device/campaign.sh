#!/usr/bin/env bash
# Grid cases on a lent GPU against a deadline (issues 14 and 17): whatever finishes comes back as records.
#
#   bash bench/device/campaign.sh DATA OUTDIR [SECONDS]      # on the GPU machine, from the repository root
#   bash bench/device/campaign.sh --dry-run OUTDIR [SECONDS]  # anywhere: the same steps, smoke cases on the CPU
#
# Runs the table cells of CAMPAIGN_PROFILE (default cifar10-lr1e-5; CAMPAIGN_SEEDS, default 3) in claim order
# through `pytest bench/test_tables.py` on the fast path (the runner every campaign uses; pytest-xdist with
# CAMPAIGN_JOBS > 1 runs that many cases side by side on the GPU), starting no case whose estimated duration
# ends after SECONDS less 40 s for packing. The estimate comes from the profile's GPU records, else
# CAMPAIGN_CASE_SECONDS (default 420: an official cifar10 run took 388 s on an H200, tenth session). A case
# never half-returns: the ones that finish are written to results/<profile>/ on the device (as `--publish`
# does here) and packed, with their cell files, into OUTDIR/campaign.tar.gz (paths under results/: unpack it with
# `tar xzf campaign.tar.gz -C results`). OUTDIR/summary.txt names each new record with its best-epoch top-1, and
# OUTDIR/campaign.log holds pytest's output. DATA is the CIFAR-10 JPEG archive carried with the tree.
# CAMPAIGN_SELECT (a pytest -k expression over the ids `<table>-<cell>-<case>-seed<N>`) narrows the cases.
# CAMPAIGN_STACK=K (K > 1) runs them instead with `intraq campaign --stack K`: in one process, K cases that share
# a stage 2 at a time, their KD fine-tuning stacked (vmap); CAMPAIGN_SELECT then lists cell names (table-key).
# Should the stacked run fail, the time left runs one case at a time (fallback.txt, campaign-fallback.log).
# A stored record of another machine class (a CPU run, another GPU) is run again here (`--same-machine`: claims
# compare cells only on one class); the record it replaces comes back under <profile>/other-machines/.
# CAMPAIGN_SAME_MACHINE=0 reuses every stored record instead.
# Exit status: 0 when the runner passed (cases left pending by the deadline pass), else 1.
set -uo pipefail

. "$(dirname "$0")/args.sh"
device_args campaign.sh 300 540 "$@"
require_data campaign.sh
enter_repo
JOBS="${CAMPAIGN_JOBS:-1}"

STACK="${CAMPAIGN_STACK:-1}"
if [[ $DRY -eq 1 ]]; then
  PROFILE="${CAMPAIGN_PROFILE:-smoke}"; RESULTS="$OUT/dry-run-results"
  ARGS=(--device cpu --threads 1 --fast none --default-case-seconds "${CAMPAIGN_CASE_SECONDS:-60}"
        --results "$RESULTS" --artifacts "$OUT/dry-run-artifacts")
  for o in synth.num_images=64 synth.batch_size=32 synth.iterations=10 finetune.epochs=3 finetune.calib_epochs=1 \
           finetune.iters_per_epoch=4 finetune.batch_size=32; do ARGS+=(--set "$o"); done  # seconds per case
else
  PROFILE="${CAMPAIGN_PROFILE:-cifar10-lr1e-5}"; RESULTS="results"
  ARGS=(--device cuda --fast auto --default-case-seconds "${CAMPAIGN_CASE_SECONDS:-420}" --publish
        --data-root "$DATA")
fi
[[ "${CAMPAIGN_SAME_MACHINE:-1}" != 0 ]] && ARGS+=(--same-machine)
# pytest bench, one case at a time (CAMPAIGN_JOBS side by side); with CAMPAIGN_STACK it is the fallback
PYTEST=("$PY" -m pytest -q -p no:cacheprovider bench/test_tables.py)
[[ $JOBS -gt 1 ]] && PYTEST+=(-n "$JOBS")
if [[ $STACK -gt 1 ]]; then  # `intraq campaign --stack K`: in this process, K cases' stage 2 stacked
  CMD=("$PY" -m intraq.cli campaign --stack "$STACK")
  for o in ${CAMPAIGN_SELECT:-}; do CMD+=(--only "$o"); done  # cell names (table-key) or case hashes
  SELECT=""; for o in ${CAMPAIGN_SELECT:-}; do SELECT="${SELECT:+$SELECT or }$o-"; done  # "x-": not x_w3a3
  [[ -n "$SELECT" ]] && PYTEST+=(-k "$SELECT")
else
  CMD=("${PYTEST[@]}")
  [[ -n "${CAMPAIGN_SELECT:-}" ]] && CMD+=(-k "$CAMPAIGN_SELECT")  # a pytest -k expression over the case ids
fi
DEADLINE=$((LIMIT - SECONDS - 40))  # the timeout below, then half a minute to pack
MARK="$(mktemp)"  # records newer than this are the ones this call made
rc=0
if [[ $DEADLINE -lt 30 ]]; then
  echo "campaign: no time left (${DEADLINE}s)" > "$OUT/summary.txt"; rc=1
else
  # pytest's deadline starts no case that would not fit; the timeout is the net under a wrong estimate
  timeout --signal=INT --kill-after=10 $((DEADLINE + 10)) "${CMD[@]}" --profile "$PROFILE" \
    --seeds "${CAMPAIGN_SEEDS:-3}" --deadline "${DEADLINE}s" "${ARGS[@]}" > "$OUT/campaign.log" 2>&1 || rc=$?
  tail -n 3 "$OUT/campaign.log"
  REMAIN=$((LIMIT - SECONDS - 40))
  if [[ $STACK -gt 1 && $rc -ne 0 && $REMAIN -ge 60 ]]; then
    # the stacked run failed (stacking untried on this device?): the rest of the time one case at a time; the
    # image sets it made are reused, so the first case is tried whatever its estimate (a case cut short by the
    # timeout costs only the time, which is left over anyway)
    echo "stacked campaign failed (rc=$rc); one case at a time for the remaining ${REMAIN}s" > "$OUT/fallback.txt"
    rc=0
    timeout --signal=INT --kill-after=10 $((REMAIN + 10)) "${PYTEST[@]}" --profile "$PROFILE" \
      --seeds "${CAMPAIGN_SEEDS:-3}" --deadline "${REMAIN}s" "${ARGS[@]}" --default-case-seconds 1 \
      > "$OUT/campaign-fallback.log" 2>&1 || rc=$?
    tail -n 3 "$OUT/campaign-fallback.log"
  fi
  NEW=()
  while IFS= read -r f; do NEW+=("$f"); done < <(cd "$RESULTS" && find "$PROFILE" -type f -newer "$MARK" \
    -not -path "*/.campaign/*" | sort)
  if [[ ${#NEW[@]} -gt 0 ]]; then
    tar czf "$OUT/campaign.tar.gz" -C "$RESULTS" "${NEW[@]}" || rc=1
  fi
  {
    echo "campaign $PROFILE: rc=$rc (stack $STACK), ${#NEW[@]} files new in $RESULTS/$PROFILE"
    cat "$OUT/fallback.txt" 2>/dev/null
    "$PY" - "$RESULTS" "${NEW[@]}" <<'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
for name in sys.argv[2:]:
    if "/cells/" in name or not name.endswith(".json"):
        continue
    if "/other-machines/" in name:
        print(f"  {name}: a record of another machine class, replaced by this class's run (kept)")
        continue
    try:
        record = json.loads((root / name).read_text())
        path = record.get("finetune_path", "?")
        if isinstance(path, dict):
            path = f"fast path, capture {path['fast'].get('capture')}, {path['fast'].get('stacked_runs')} stacked"
        else:
            path = f"{path} path"
        print(f"  {name}: {record['method']}, best epoch {record['accuracy'].get('best_epoch')}, "
              f"{record['seconds']['total']:.0f} s, stage 2 on the {path}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"  {name}: unreadable ({exc})")
EOF
  } > "$OUT/summary.txt"
fi
rm -f "$MARK"
[[ $rc -eq 5 ]] && rc=0  # pytest: nothing collected (every case done)
[[ $rc -eq 0 ]] || rc=1
cat "$OUT/summary.txt"
exit $rc
