# Sourced by the device scripts (session.sh, campaign.sh, teacher.sh; check.sh for enter_repo): the start they
# share.

# device_args NAME DRY_SECONDS LIVE_SECONDS "$@": parse `DATA OUTDIR [SECONDS]` or `--dry-run OUTDIR [SECONDS]`
# into DRY (0/1), DATA (absolute when it exists; empty in a dry run), OUT (created, absolute) and LIMIT (the
# default of the mode when SECONDS is not given); anything else prints the usage and exits 2.
device_args() {
  local name="$1" dry_seconds="$2" live_seconds="$3"
  shift 3
  DRY=0
  if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
  if [[ $DRY -eq 1 && ( $# -eq 1 || $# -eq 2 ) ]]; then
    DATA=""; OUT="$1"; LIMIT="${2:-$dry_seconds}"
  elif [[ $DRY -eq 0 && ( $# -eq 2 || $# -eq 3 ) ]]; then
    DATA="$1"; OUT="$2"; LIMIT="${3:-$live_seconds}"
  else
    echo "usage: bash bench/device/$name DATA OUTDIR [SECONDS]  |  bash bench/device/$name --dry-run OUTDIR [SECONDS]" >&2
    exit 2
  fi
  mkdir -p "$OUT"
  OUT="$(cd "$OUT" && pwd)"
  if [[ -n "$DATA" && -e "$DATA" ]]; then DATA="$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")"; fi
}

# require_data NAME: exit 2, naming the fix, when a live run has no data at DATA.
require_data() {
  if [[ $DRY -eq 0 && ! -f "$DATA" && ! -d "$DATA" ]]; then
    echo "$1: no CIFAR-10 data at $DATA: carry the archive with the tree (see the usage above)" >&2
    exit 2
  fi
}

# enter_repo: work from the repository root, import intraq from it, run Python as PY.
enter_repo() {
  cd "$(dirname "${BASH_SOURCE[0]}")/../.."
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  PY="${PYTHON:-python3}"
}
