"""The stage-2 epoch loop shared by KD fine-tuning and Qimera's joint training.

Per epoch: the method trains (or calibrates), the loop evaluates when asked, checks the epoch's losses,
steps the lr schedules and checkpoints everything atomically, so an interrupted run (Ctrl-C, SIGTERM through
the CLI, a crash) resumes at the next epoch with the same result as an uninterrupted run.

Two flags on the epoch's training loss (the first of `loss_keys`, e.g. the KD loss):
- diverged: a monitored loss is not finite. Non-finite weights never recover, so the run stops there
  (evaluated once more) and a resumed run does not train on.
- exploded: the loss is finite but more than `EXPLOSION_FACTOR` (10) times the loss of the first epoch that
  trained (the run's starting point). The run goes on; the epoch is flagged, since such a loss means the
  student left the teacher far behind (an lr too high for the images, or corrupt images), not noise.
  A loss already huge in the first trained epoch has no sane reference and is not flagged (it diverges or
  shows in the accuracy).
"""

from __future__ import annotations

import math
import time
import warnings
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from intraq.artifacts import load_torch, save_torch
from intraq.interrupts import deferred_interrupts
from intraq.results import sitting

EXPLOSION_FACTOR = 10.0  # an epoch's loss above this multiple of the first trained epoch's loss is "exploded"


class MultiStepLR(torch.optim.lr_scheduler.MultiStepLR):
    """torch's MultiStepLR in closed form: lr(e) = base · gamma ** #{milestones s ≤ e}.

    That is exactly the lineage's `multi_step` policy (methods §1.4, `multi_step_lr`): torch's own form
    multiplies in one milestone at a time, which can differ in the last bit (repeated milestones).
    """

    def get_lr(self) -> list[float]:  # type: ignore[override]
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base * self.gamma**passed for base in self.base_lrs]


def seek(schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler], epoch: int) -> None:
    """Set every schedule (and its optimizer's lr) to `epoch`; stepping without an optimizer step is intended
    here (calibration epochs, a resumed run), so torch's warning about that order is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        for scheduler in schedulers:
            scheduler.last_epoch = epoch - 1
            scheduler.step()


@dataclass
class EpochLoop:
    """How a stage-2 run is driven; the method supplies what happens inside an epoch."""

    epochs: int
    iters_per_epoch: int
    desc: str
    checkpoint_path: Path | None = None
    loss_keys: tuple[str, ...] = ("loss",)  # monitored losses of an epoch's record; the first is the KD loss
    phases: tuple[str, ...] = ("train",)  # names of the training phases whose seconds are recorded
    progress: bool = True


@dataclass
class LoopOutcome:
    history: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    sittings: list[dict] = field(default_factory=list)  # one per (re)start: machine, torch, commit, first epoch

    def first_epoch(self, flag: str) -> int | None:
        return next((h["epoch"] for h in self.history if h.get(flag)), None)


def flag_losses(record: dict, history: list[dict], loss_keys: tuple[str, ...]) -> None:
    """Set record["diverged"] and record["exploded"] for an epoch that trained (see the module docstring)."""
    losses = [record.get(k) for k in loss_keys]
    if all(v is None for v in losses):
        return  # nothing trained (a calibration epoch)
    record["diverged"] = any(v is not None and not math.isfinite(v) for v in losses)
    first = next((h[loss_keys[0]] for h in history if h.get(loss_keys[0]) is not None), None)
    reference = abs(first) if first is not None and math.isfinite(first) else None
    record["exploded"] = (
        not record["diverged"] and losses[0] is not None and reference is not None
        and abs(losses[0]) > EXPLOSION_FACTOR * reference
    )


def run_epochs(
    loop: EpochLoop,
    train_epoch: Callable[[int, tqdm], dict],
    phase: Callable[[int], str],
    should_evaluate: Callable[[int, dict], bool],
    evaluate: Callable[[], float],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
    state: Callable[[], dict[str, Any]],
    restore: Callable[[dict[str, Any]], None],
    device: torch.device,
) -> LoopOutcome:
    """Epochs 0..epochs-1 (or from the checkpoint on): `train_epoch(epoch, bar)` returns the epoch's record,
    its time is added to seconds[phase(epoch)]; "acc" is added when `should_evaluate(epoch, record)`.
    `state()` / `restore(blob)` save and reload the method's modules, optimizers and generators."""
    out = LoopOutcome(seconds={name: 0.0 for name in (*loop.phases, "evaluation")})
    start = 0
    if loop.checkpoint_path is not None and loop.checkpoint_path.exists():
        blob = load_torch(loop.checkpoint_path)
        restore(blob)
        out.history, out.seconds, start = blob["history"], blob["seconds"], blob["epoch"] + 1
        out.sittings = list(blob.get("sittings", []))
        if out.history and out.history[-1].get("diverged"):
            start = loop.epochs  # stopped on divergence: nothing left to resume
    seek(schedulers, start)
    if start < loop.epochs:
        out.sittings.append({**sitting(device), "first_epoch": start})
    per_epoch = loop.iters_per_epoch
    bar = tqdm(total=loop.epochs * per_epoch, initial=start * per_epoch, desc=loop.desc, disable=not loop.progress)
    for epoch in range(start, loop.epochs):
        tic = time.perf_counter()
        record = train_epoch(epoch, bar)
        out.seconds[phase(epoch)] += time.perf_counter() - tic
        flag_losses(record, out.history, loop.loss_keys)
        diverged = record.get("diverged", False)
        if diverged or should_evaluate(epoch, record):
            tic = time.perf_counter()
            record["acc"] = float(evaluate())
            out.seconds["evaluation"] += time.perf_counter() - tic
            bar.set_postfix(epoch=epoch, acc=f"{record['acc']:.2f}")
        out.history.append(record)
        seek(schedulers, epoch + 1)
        if loop.checkpoint_path is not None:
            blob = {**state(), "history": out.history, "seconds": out.seconds, "epoch": epoch, "sittings": out.sittings}
            with deferred_interrupts():  # a finished epoch is never lost to a Ctrl-C during its save
                save_torch(blob, loop.checkpoint_path)
        if diverged:
            # A non-finite loss never recovers (NaN weights): stop, keep the evaluated epochs, flag it.
            bar.write(f"{loop.desc} diverged at epoch {epoch} (non-finite loss); stopping")
            break
        if record.get("exploded") and out.first_epoch("exploded") == epoch:
            bar.write(f"{loop.desc}: loss exploded at epoch {epoch} (> {EXPLOSION_FACTOR:g}x the first epoch's)")
    bar.close()
    return out
