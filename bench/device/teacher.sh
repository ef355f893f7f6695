#!/usr/bin/env bash
# Train the stronger `cifar10` teacher of issue 14 on a lent GPU, within a time limit, resumable across sessions.
#
#   bash bench/device/teacher.sh DATA OUTDIR [SECONDS]   # on the GPU machine, from the repository root
#   bash bench/device/teacher.sh --dry-run OUTDIR [SECONDS]  # anywhere: the same steps, 2 epochs of the digits CNN
#
# DATA is the CIFAR-10 JPEG archive, carried with the tree (e.g. artifacts/device/cifar10-jpeg.tar.gz; the machine
# has no network). Trains ResNet-20 with the project's recipe at TEACHER_EPOCHS (default 160) epochs and weight
# decay TEACHER_WD (default 1e-4) into resume/teacher-cifar10/resnet20-cifar10-e<EPOCHS>-wd<WD>.pt (at the recipe's
# own weight decay, 5e-4, without the -wd part: TEACHER_EPOCHS=200 TEACHER_WD=5e-4 continues that earlier run).
# Why 1e-4: the stage-2 sharpness depends on the teacher's weight scale, which weight decay sets, and at 5e-4 it
# reaches the official lr's stability bound (results/diagnostics/README.md). Training saves its state after every
# epoch (`.state` beside the checkpoint, about 2 MB): a run stopped by the time limit (SIGTERM, as Ctrl-C: the
# finished epochs stay) continues from it the next time, on any machine, once that state is committed. OUTDIR
# receives the state,
# or, once training has finished, the checkpoint with its sidecar (test top-1, recipe, machine) and checksum, and
# summary.txt: "teacher finished", "teacher stopped at the time limit" or "teacher failed rc=N", and for a finished
# teacher, when the time limit leaves two minutes, its stage-2 sharpness on real images (bench/probe_finetune.py).
set -uo pipefail

. "$(dirname "$0")/args.sh"
device_args teacher.sh "${TEACHER_SECONDS:-300}" 480 "$@"
enter_repo
EPOCHS="${TEACHER_EPOCHS:-160}"
WD="${TEACHER_WD:-1e-4}"

if [[ $DRY -eq 1 ]]; then
  FOLDER="$OUT/dry-run-teacher"; NAME="digits_cnn-digits-e${TEACHER_EPOCHS:-2}.pt"
  ARGS=(--profile smoke --set "teacher.train_epochs=${TEACHER_EPOCHS:-2}" --device cpu)
else
  FOLDER="resume/teacher-cifar10"; NAME="resnet20-cifar10-e$EPOCHS.pt"
  ARGS=(--profile cifar10 --data-root "$DATA" --set "teacher.train_epochs=$EPOCHS" --device cuda)
fi
ARGS+=(--set "teacher.train_weight_decay=$WD")
if [[ "$WD" != "5e-4" ]]; then  # a weight decay other than the recipe's own: its own checkpoint and state
  NAME="${NAME%.pt}-wd$WD.pt"
fi
if [[ $DRY -eq 0 && -f "teachers/$NAME" && -f "teachers/${NAME%.pt}.json" ]]; then  # finished and committed
  echo "teacher already committed: teachers/$NAME (nothing to do)" | tee "$OUT/summary.txt"
  exit 0  # before the data check: a committed teacher needs no data carried along
fi
require_data teacher.sh
mkdir -p "$FOLDER"
CKPT="$FOLDER/$NAME"
STATE="${CKPT%.pt}.state"

rc=0
SIDECAR="${CKPT%.pt}.json"  # written last: a teacher is finished only with it
if [[ -f "$CKPT" && ! -f "$SIDECAR" ]]; then
  rm -f "$CKPT" "$CKPT.sha256"  # stopped while saving: its state (kept until the sidecar is written) redoes it
fi
if [[ -f "$CKPT" ]]; then
  echo "teacher already finished: $CKPT" > "$OUT/summary.txt"
else
  timeout --signal=TERM --kill-after=60 "$LIMIT" "$PY" -m intraq.cli teacher train "${ARGS[@]}" --quiet \
    --channels-last --out "$CKPT" > "$OUT/teacher.log" 2>&1 || rc=$?
  tail -n 5 "$OUT/teacher.log"
  if [[ $rc -eq 0 ]]; then
    echo "teacher finished" > "$OUT/summary.txt"
  elif [[ ( $rc -eq 124 || $rc -eq 130 || $rc -eq 137 ) && -f "$STATE" ]]; then
    EPOCH=$("$PY" -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=True)['epoch'])" "$STATE" \
      2>/dev/null || echo "?")
    echo "teacher stopped at the time limit (${LIMIT}s) after epoch $EPOCH; its state resumes it" \
      > "$OUT/summary.txt"; rc=0
  elif [[ $rc -eq 124 || $rc -eq 130 || $rc -eq 137 ]]; then
    echo "teacher stopped at the time limit (${LIMIT}s) before its first epoch finished: give it more time" \
      > "$OUT/summary.txt"; rc=1
  else
    echo "teacher failed rc=$rc" > "$OUT/summary.txt"
  fi
fi
# A finished teacher's first question (issue 17): is the official stage-2 lr below the SGD stability bound for it?
# Its KD-loss sharpness on real images at the calibrated W4A4 student, if the time limit leaves room (a minute or
# two on a GPU) and OUTDIR holds no probe record yet; the record lands in OUTDIR/finetune-probe/ (compare it with
# results/diagnostics/README.md).
LEFT=$((LIMIT - SECONDS))
if [[ -f "$SIDECAR" && $LEFT -ge 120 && -z "$(find "$OUT/finetune-probe" -name '*.json' 2>/dev/null)" ]]; then
  PROBE_ARTIFACTS="$(mktemp -d)"  # the real image set it builds (60 MB at cifar10): never handed back
  PROBE=(--profile "$([[ $DRY -eq 1 ]] && echo smoke || echo cifar10)" --set "teacher.checkpoint=$CKPT"
         --set synth.method=real --steps 0 --sharpness 20 --artifacts "$PROBE_ARTIFACTS" --out "$OUT/finetune-probe")
  if [[ $DRY -eq 1 ]]; then
    PROBE+=(--device cpu --threads 1 --set synth.num_images=64 --set finetune.iters_per_epoch=5)  # seconds, not minutes
  else
    PROBE+=(--set "data.root=$DATA" --device cuda)
  fi
  prc=0
  timeout --signal=TERM --kill-after=30 $((LEFT - 30)) "$PY" bench/probe_finetune.py "${PROBE[@]}" \
    > "$OUT/sharpness.log" 2>&1 || prc=$?
  rm -rf "$PROBE_ARTIFACTS"
  if [[ $prc -eq 0 ]]; then
    grep -a -o "sharpness [^:]*: lr bound .* x bound" "$OUT/sharpness.log" | tail -n 1 | sed 's/^/real images: /' \
      >> "$OUT/summary.txt"
  elif [[ $prc -eq 124 || $prc -eq 137 ]]; then
    echo "sharpness probe stopped at the time limit (see sharpness.log); the teacher itself is fine" >> "$OUT/summary.txt"
  else
    echo "sharpness probe failed rc=$prc (see sharpness.log); the teacher itself is fine" >> "$OUT/summary.txt"
  fi
fi
for f in "$CKPT" "$CKPT.sha256" "$SIDECAR" "$STATE" "$STATE.sha256"; do
  if [[ -f "$f" ]] && ! cp "$f" "$OUT/"; then
    echo "could not copy $f to $OUT" >> "$OUT/summary.txt"; rc=1
  fi
done
cat "$OUT/summary.txt"
exit $rc
