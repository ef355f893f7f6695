#!/usr/bin/env bash
# A lent GPU session's work in one call: the device tool lends about 15 minutes a session and each machine start
# costs minutes of them, so one command does everything, against one deadline.
#
#   bash bench/device/session.sh DATA OUTDIR [SECONDS]      # on the GPU machine, from the repository root
#   bash bench/device/session.sh --dry-run OUTDIR [SECONDS]  # anywhere: the same steps, tiny, on the CPU
#
# 1. Alone on the GPU, since its timings need the GPU to themselves: check.sh's install, env and official_run
#    steps (the GPU cost of one official cifar10 run, issue 12's key number: check-timed/<gpu>.json).
# 2. Then side by side, since nothing of them is timed: the teacher (teacher.sh, DATA, until SECONDS after the
#    start less a minute for packing; resumable, see there) and check.sh's equality and pipeline steps.
# 3. OUTDIR/session.tar.gz holds every part's files (the device tool hands back 8 files at most: teacher/,
#    check-timed/, check/), OUTDIR/summary.txt every part's summary.
# Exit status: 0 when every part passed (a teacher stopped at its time limit with its state saved passes), else 1.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ $DRY -eq 1 && ( $# -eq 1 || $# -eq 2 ) ]]; then
  DATA=""; OUT="$1"; LIMIT="${2:-600}"
elif [[ $DRY -eq 0 && ( $# -eq 2 || $# -eq 3 ) ]]; then
  DATA="$1"; OUT="$2"; LIMIT="${3:-540}"
else
  echo "usage: bash bench/device/session.sh DATA OUTDIR [SECONDS]  |  bash bench/device/session.sh --dry-run OUTDIR [SECONDS]" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DRYARG=(); [[ $DRY -eq 1 ]] && DRYARG=(--dry-run)
STATUS=0

# 1. timed, alone (in a dry run the CPU's "throughput" step stands in: the official run is measured on CUDA only)
TIMED="install,env,official_run"; [[ $DRY -eq 1 ]] && TIMED="install,env,throughput"
CHECK_STEPS="$TIMED" bash "$HERE/check.sh" "${DRYARG[@]}" "$WORK/check-timed" || STATUS=1

# 2. untimed, side by side, until the deadline less a minute for packing
LEFT=$((LIMIT - SECONDS - 60))
if [[ $LEFT -lt 60 ]]; then
  echo "no time left for the teacher and the equality check (${LEFT}s)" > "$WORK/late.txt"; STATUS=1
else
  # the equality step's limit leaves the pipeline step its 90 s and both their 10 s kill-afters; under 60 s for
  # equality, the pipeline step alone (installed wheels, if any, are in /tmp/site from the timed part already)
  EQ=$((LEFT - 120)); STEPS=equality,pipeline; [[ $EQ -lt 60 ]] && STEPS=pipeline
  CHECK_STEPS=$STEPS EQUALITY_SECONDS=$EQ timeout --kill-after=10 "$LEFT" \
    bash "$HERE/check.sh" "${DRYARG[@]}" "$WORK/check" > "$WORK/check.out" 2>&1 &
  CHECK_PID=$!
  if [[ $DRY -eq 1 ]]; then
    TEACHER_SECONDS="$LEFT" bash "$HERE/teacher.sh" --dry-run "$WORK/teacher" || STATUS=1
  else
    bash "$HERE/teacher.sh" "$DATA" "$WORK/teacher" "$((LEFT - 60))" || STATUS=1  # less its 60 s kill-after
  fi
  wait "$CHECK_PID" || STATUS=1
fi

# 3. pack
{
  for part in check-timed check teacher; do
    echo "== $part"
    cat "$WORK/$part/summary.txt" 2>/dev/null || echo "(no summary: see its log in session.tar.gz)"
  done
  [[ -f "$WORK/late.txt" ]] && cat "$WORK/late.txt"
  echo "== session $([[ $STATUS -eq 0 ]] && echo ok || echo failed) ${SECONDS}s of ${LIMIT}s"
} > "$OUT/summary.txt"
tar czf "$OUT/session.tar.gz" -C "$WORK" . || STATUS=1
cat "$OUT/summary.txt"
exit $STATUS
