#!/usr/bin/env bash
# A lent GPU session's work in one call: the device tool lends about 15 minutes a session and each machine start
# costs minutes of them, so one command does everything, against one deadline.
#
#   bash bench/device/session.sh DATA OUTDIR [SECONDS]      # on the GPU machine, from the repository root
#   bash bench/device/session.sh --dry-run OUTDIR [SECONDS]  # anywhere: the same steps, tiny, on the CPU
#
# 1. check.sh's install and env steps.
# 2. Side by side, since neither is a timing: grid cases (campaign.sh, DATA: the cases that finish are records,
#    issues 14 and 17; CAMPAIGN_* as there) and check.sh's equality step (fast path = reference on this GPU; it
#    vouches for the fast-path records beside it), until SECONDS less 20 s for packing and less
#    SESSION_MEASURE_SECONDS (default 0).
# 3. With SESSION_MEASURE_SECONDS > 0, then alone on the GPU, since it is a timing: check.sh's official_run step
#    (the GPU cost of one official cifar10 run at the concurrencies INTRAQ_BENCH_STACKED / _PROCESSES name,
#    issue 12's key number: check-timed/<gpu>.json).
# 4. OUTDIR/session.tar.gz holds every part's files (the device tool hands back 8 files at most: check/,
#    campaign/ with its campaign.tar.gz of records, check-timed/), OUTDIR/summary.txt every part's summary.
# Exit status: 0 when every part passed (cases left pending by the deadline pass), else 1.
set -uo pipefail

. "$(dirname "$0")/args.sh"
device_args session.sh 600 590 "$@"
require_data session.sh  # before any device minute goes to the steps that do not need it
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DRYARG=(); [[ $DRY -eq 1 ]] && DRYARG=(--dry-run)
MEASURE="${SESSION_MEASURE_SECONDS:-0}"
STATUS=0

# 1. install (wheels carried in .whl/, if any) and the environment record
CHECK_STEPS="install,env" bash "$HERE/check.sh" "${DRYARG[@]}" "$WORK/check-env" || STATUS=1
[[ -d /tmp/site ]] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

# 2. the campaign beside the equality check, until the deadline less packing and the measurement's reserve
LEFT=$((LIMIT - SECONDS - 20 - MEASURE))  # packing takes seconds
if [[ $LEFT -lt 90 ]]; then
  echo "no time left for the campaign and the equality check (${LEFT}s)" > "$WORK/late.txt"; STATUS=1
else
  EQ=$(( LEFT < 180 ? LEFT - 20 : 160 ))  # its checks at 300 steps; those finished are kept
  CHECK_STEPS=equality EQUALITY_SECONDS=$EQ timeout --kill-after=10 "$LEFT" \
    bash "$HERE/check.sh" "${DRYARG[@]}" "$WORK/check" > "$WORK/check.out" 2>&1 &
  CHECK_PID=$!
  if [[ $DRY -eq 1 ]]; then
    bash "$HERE/campaign.sh" --dry-run "$WORK/campaign" "$LEFT" || STATUS=1
  else
    bash "$HERE/campaign.sh" "$DATA" "$WORK/campaign" "$LEFT" || STATUS=1
  fi
  wait "$CHECK_PID" || STATUS=1
fi

# 3. the timed measurement, alone on the GPU (in a dry run the CPU's "throughput" step stands in)
if [[ $MEASURE -gt 0 ]]; then
  TIMED="official_run"; [[ $DRY -eq 1 ]] && TIMED="throughput"
  CHECK_STEPS="$TIMED" timeout --kill-after=5 "$MEASURE" bash "$HERE/check.sh" "${DRYARG[@]}" "$WORK/check-timed" \
    || STATUS=1
fi

# 4. pack
{
  for part in check-env check campaign check-timed; do
    [[ $part == check-timed && $MEASURE -eq 0 ]] && continue
    echo "== $part"
    cat "$WORK/$part/summary.txt" 2>/dev/null || echo "(no summary: see its log in session.tar.gz)"
  done
  [[ -f "$WORK/late.txt" ]] && cat "$WORK/late.txt"
  echo "== session $([[ $STATUS -eq 0 ]] && echo ok || echo failed) ${SECONDS}s of ${LIMIT}s"
} > "$OUT/summary.txt"
tar czf "$OUT/session.tar.gz" --exclude='dry-run-artifacts' -C "$WORK" . || STATUS=1
cat "$OUT/summary.txt"
exit $STATUS
