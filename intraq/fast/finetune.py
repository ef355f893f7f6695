"""Stage 2 fast path: calibration, then KD fine-tuning of R quantized students stepped together.

The algorithm is the reference trainer's (`intraq.finetune.trainer.finetune`): the same calibration, sampler,
crops and flips (replayed by `schedule.epoch_schedule` from the same seeded generator), KD loss
(`kd_loss_intraq`), SGD with Nesterov momentum and weight decay, multi-step lr, test evaluation at the same
epochs, best/final/after-calibration accuracies, stop on a non-finite epoch loss. What differs is only how it
runs: images, labels and the test set resident on the device; each epoch's draws uploaded once; no host
sync inside an epoch (losses are summed on the device and read at the epoch's end); the step optionally
captured once (`FastSettings.capture`); with R > 1 runs, the students are stacked
(`torch.func.stack_module_state`) and stepped with `vmap` + `functional_call`, the teacher runs once on all R
batches. A stacked run equals the same run alone up to float reordering (tests/test_fast_finetune.py).

With `checkpoint_path`, every finished epoch's state (students, momentum, the generators as they were before the
next epoch's draws, histories) is kept as device copies and written atomically at most every `checkpoint_seconds`
and on Ctrl-C (SIGTERM too through the `intraq` CLI, which turns it into one), and a later call continues after
the last written epoch with the same result as an uninterrupted run (an official CIFAR-10 epoch takes about a
second on a GPU: a write per epoch would cost more).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from intraq.artifacts import load_torch, save_torch
from intraq.config import FinetuneConfig
from intraq.errors import UserInputError
from intraq.fast.calibration import FastCalibration
from intraq.fast.capture import StepRunner, compile_loss
from intraq.fast.optim import sgd_step
from intraq.fast.schedule import epoch_schedule, finetune_lor_settings, to_device
from intraq.fast.settings import FastSettings
from intraq.finetune.augment import make_finetune_augment
from intraq.finetune.kd import kd_loss_intraq
from intraq.finetune.loop import flag_losses
from intraq.finetune.stability import kd_sharpness
from intraq.finetune.trainer import CalibrationSource, EpochSampler, multi_step_lr, split_sharpness
from intraq.interrupts import deferred_interrupts
from intraq.quantize import act_quantizers
from intraq.results import sitting
from intraq.synthesis.lor import apply_affine

# Fields that every stacked run must share (they shape the step); lr, lr_steps and lr_decay may differ.
SHARED_FIELDS = ("epochs", "iters_per_epoch", "batch_size", "momentum", "nesterov", "weight_decay", "temperature",
                 "alpha", "calib_epochs", "crop_scale", "flip", "eval_every")


@dataclass
class FinetuneRun:
    """One run of stage 2: its quantized (uncalibrated) student, image set, calibration source, seed, config."""

    student: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    calibration: CalibrationSource
    seed: int
    cfg: FinetuneConfig


@dataclass
class FastFinetuneResult:
    """The reference's FinetuneResult fields, plus how the fast path ran (settings, TF32/cuDNN flags)."""

    acc_after_calibration: float
    acc_final: float
    acc_best: float
    best_epoch: int
    diverged_at_epoch: int | None = None
    exploded_at_epoch: int | None = None  # as the reference: finite loss > 10x the first trained epoch's
    history: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    sittings: list[dict] = field(default_factory=list)
    fast: dict = field(default_factory=dict)
    sharpness: dict | None = None  # as the reference's

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_history(history: list[dict], calib_epochs: int) -> dict:
    """After-calibration, final and best-epoch accuracies; ties for best go to the later epoch (as the reference)."""
    evaluated = [h for h in history if "acc" in h]
    best = max(evaluated, key=lambda h: (h["acc"], h["epoch"]))
    return {
        "acc_after_calibration": next(h["acc"] for h in evaluated if h["epoch"] == calib_epochs - 1),
        "acc_final": evaluated[-1]["acc"],
        "acc_best": best["acc"],
        "best_epoch": best["epoch"],
        "diverged_at_epoch": next((h["epoch"] for h in history if h.get("diverged")), None),
        "exploded_at_epoch": next((h["epoch"] for h in history if h.get("exploded")), None),
    }


def check_stackable(runs: list[FinetuneRun]) -> None:
    if not runs:
        raise ValueError("finetune_fast needs at least one run")
    first = runs[0]
    for run in runs[1:]:
        for name in SHARED_FIELDS:
            if getattr(run.cfg, name) != getattr(first.cfg, name):
                raise ValueError(f"stacked runs must share finetune.{name}; got {getattr(first.cfg, name)!r} "
                                 f"and {getattr(run.cfg, name)!r}: run them in separate groups")
        if run.images.shape != first.images.shape or run.labels.shape != first.labels.shape:
            raise ValueError("stacked runs need image sets of the same shape; run them in separate groups")
    if first.cfg.calib_epochs < 1 or first.cfg.epochs <= first.cfg.calib_epochs:
        raise ValueError(f"need 1 <= calib_epochs < epochs, got {first.cfg.calib_epochs} and {first.cfg.epochs}")


class StudentStack:
    """R students as one set of (R, ...) parameters (or the one student itself when R == 1)."""

    def __init__(self, students: list[nn.Module], channels_last: bool) -> None:
        self.r = len(students)
        self.stacked = self.r > 1
        if self.stacked:
            for student in students:  # eager, once: vmap cannot run the check's host read inside the step
                for quant in act_quantizers(student):
                    quant.check_calibrated()
            params, buffers = stack_module_state(students)
            self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
            self.buffers = buffers
            self.base = copy.deepcopy(students[0]).eval()
        else:
            self.base = students[0]
            if channels_last:
                self.base.to(memory_format=torch.channels_last)
            self.params = {k: p for k, p in self.base.named_parameters()}
            self.buffers = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, B, C, H, W) -> logits (R, B, K)."""
        if not self.stacked:
            return self.base(x[0]).unsqueeze(0)

        def one(params: dict, buffers: dict, xr: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (xr,))

        # contiguous: cuDNN's convolution under vmap asks a channels-last input for its layout, which vmap does not
        # implement (torch 2.11 on an H200: "NYI: querying is_contiguous inside of vmap"); same values either way
        return vmap(one)(self.params, self.buffers, x.contiguous())

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Top-1 in percent per run (R,), the test set resident on the device, in large batches."""
        correct = torch.zeros(self.r, dtype=torch.long, device=images.device)
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            if self.stacked:
                def one(params: dict, buffers: dict, xb: torch.Tensor) -> torch.Tensor:
                    return functional_call(self.base, (params, buffers), (xb,))

                logits = vmap(one, in_dims=(0, 0, None))(self.params, self.buffers, x.contiguous())  # see forward
            else:
                logits = self.base(x).unsqueeze(0)
            correct += (logits.argmax(-1) == y).sum(-1)
        return 100.0 * correct.double() / max(len(images), 1)

    def unstack(self) -> list[dict[str, torch.Tensor]]:
        """Each run's state dict (parameters and buffers), e.g. to save a student (own copies: a view of the
        stacked tensor would be saved with all R runs' storage)."""
        if not self.stacked:
            return [self.base.state_dict()]
        return [{**{k: v[r].detach().clone() for k, v in self.params.items()},
                 **{k: v[r].clone() for k, v in self.buffers.items()}}
                for r in range(self.r)]


def _rng_state(generators: list[torch.Generator], samplers: list[EpochSampler]) -> list[dict[str, Any]]:
    return [{"generator": g.get_state(), "order": s.order.clone(), "pos": s.pos}
            for g, s in zip(generators, samplers, strict=True)]


def _set_rng_state(generators: list[torch.Generator], samplers: list[EpochSampler], state: list[dict]) -> None:
    for g, s, saved in zip(generators, samplers, state, strict=True):
        g.set_state(saved["generator"])
        s.order, s.pos = saved["order"], saved["pos"]


def load_checkpoint(path: Path | None, runs: list[FinetuneRun]) -> dict[str, Any] | None:
    """The fast stage-2 checkpoint at `path`, checked to belong to these runs (count and seeds)."""
    if path is None or not path.exists():
        return None
    blob = load_torch(path)
    seeds = [run.seed for run in runs]
    if not isinstance(blob, dict) or blob.get("kind") != "fast-finetune" or blob.get("seeds") != seeds:
        raise UserInputError(f"{path} is not a fast stage-2 checkpoint of runs with seeds {seeds}; delete it to "
                             "start stage 2 again")
    return blob


class EpochSnapshots:
    """The latest finished epoch's state, written to `path` at most every `every_seconds` and on an interrupt."""

    def __init__(self, path: Path | None, every_seconds: float) -> None:
        self.path, self.every_seconds = path, every_seconds
        self.latest: dict[str, Any] | None = None
        self.unwritten = False
        self.last_write = time.monotonic()

    def keep(self, state: dict[str, Any]) -> None:
        """`state` must be the caller's own copies (it is written later, after more steps)."""
        self.latest, self.unwritten = state, True
        if time.monotonic() - self.last_write >= self.every_seconds:
            self.write()

    def write(self) -> None:
        if self.path is None or not self.unwritten:
            return
        with deferred_interrupts():  # a finished epoch is never lost to a Ctrl-C during its save
            save_torch(self.latest, self.path)
            self.unwritten, self.last_write = False, time.monotonic()  # before a held signal is delivered

    @contextmanager
    def written_on_interrupt(self) -> Iterator[None]:
        try:
            yield
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI: keep the last finished epoch
            self.write()
            raise


def finetune_fast(
    runs: list[FinetuneRun],
    teacher: nn.Module,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    device: torch.device,
    fast: FastSettings | None = None,
    progress: bool = True,
    on_epoch: Callable[[int], None] | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> list[FastFinetuneResult]:
    """Calibrate and KD-fine-tune every run; `test_images` are normalized float tensors (moved to the device).

    `on_epoch(epoch)` is called after each epoch, once its state is kept for the checkpoint (the benchmark uses it
    to time and cut runs short). With `checkpoint_path`, a call resumes after the last epoch saved there (see the
    module doc for when epochs are written). The numeric flags of `fast` hold for the call only."""
    fast = fast or FastSettings()
    fast.check_device(device)
    check_stackable(runs)
    with fast.numeric_applied():
        return _finetune_fast(runs, teacher, test_images, test_labels, device, fast, progress, on_epoch,
                              EpochSnapshots(checkpoint_path, checkpoint_seconds))


def _finetune_fast(
    runs: list[FinetuneRun], teacher: nn.Module, test_images: torch.Tensor, test_labels: torch.Tensor,
    device: torch.device, fast: FastSettings, progress: bool, on_epoch: Callable[[int], None] | None,
    snapshots: EpochSnapshots,
) -> list[FastFinetuneResult]:
    checkpoint_path = snapshots.path
    cfg, r = runs[0].cfg, len(runs)
    memory_format = torch.channels_last if fast.channels_last else torch.contiguous_format
    teacher.eval().requires_grad_(False).to(device=device, memory_format=memory_format)
    # The layout from the start, as the reference trainer: calibration's ranges depend (in the last bits) on it.
    students = [run.student.to(device=device, memory_format=memory_format).eval().requires_grad_(True)
                for run in runs]
    test_x = test_images.to(device).contiguous(memory_format=memory_format)
    test_y = test_labels.to(device)
    images = torch.stack([run.images for run in runs]).to(device)  # (R, N, C, H, W), resident
    labels = torch.stack([run.labels for run in runs]).to(device)
    height, width = images.shape[-2:]
    generators = [torch.Generator().manual_seed(run.seed) for run in runs]
    samplers = [EpochSampler(len(run.images), cfg.batch_size, g) for run, g in zip(runs, generators, strict=True)]
    lor = finetune_lor_settings(cfg)
    batch = samplers[0].batch_size
    histories: list[list[dict]] = [[] for _ in runs]
    seconds = {"calibration": 0.0, "finetune": 0.0, "evaluation": 0.0}
    sittings: list[dict] = []
    alive = [True] * r
    start = 0
    blob = load_checkpoint(checkpoint_path, runs)
    if blob is not None:
        for student, state in zip(students, blob["students"], strict=True):
            student.load_state_dict(state)
        for run, state in zip(runs, blob["calibration"] or [None] * r, strict=True):
            if state is not None:
                run.calibration.load_state_dict(state)
        _set_rng_state(generators, samplers, blob["rng"])
        histories, seconds, alive, sittings = blob["histories"], blob["seconds"], blob["alive"], blob["sittings"]
        start = blob["epoch"] + 1 if any(alive) else cfg.epochs  # all diverged: nothing left to run
    if start < cfg.epochs:  # each sitting with its own fast settings: a resumed run may capture otherwise
        sittings.append({**sitting(device), "first_epoch": start, "fast": fast.record()})
    bar = tqdm(total=cfg.epochs * cfg.iters_per_epoch, initial=start * cfg.iters_per_epoch,
               desc=f"fine-tune x{r} (fast)", disable=not progress)

    def save(epoch: int, students_state: list[dict], momentum: list[torch.Tensor] | None, rng: list[dict]) -> None:
        """Everything a resumed call needs after `epoch` (`rng`: the draws' state before the next epoch's), as
        copies (device tensors stay on the device: no host sync here)."""
        state = {"kind": "fast-finetune", "seeds": [run.seed for run in runs], "epoch": epoch,
                 "students": [{k: v.detach().clone() for k, v in sd.items()} for sd in students_state],
                 "momentum": momentum, "rng": rng,
                 # the calibration sources matter only until calibration is over (GDFQ: a generator + Adam)
                 "calibration": copy.deepcopy([run.calibration.state_dict() for run in runs])
                 if epoch < cfg.calib_epochs - 1 else None,
                 "histories": copy.deepcopy(histories), "seconds": dict(seconds), "alive": list(alive),
                 "sittings": copy.deepcopy(sittings)}
        snapshots.keep(state)

    def evaluate_into(epoch: int, stack: StudentStack | None, which: list[bool]) -> None:
        """Evaluate (all runs at once) and record the accuracy for the runs whose reference would evaluate now."""
        if not any(which):
            return
        tic = time.perf_counter()
        if stack is None:
            accs = [float(StudentStack([s], fast.channels_last).evaluate(test_x, test_y, fast.eval_batch_size)[0])
                    for s in students]
        else:
            accs = stack.evaluate(test_x, test_y, fast.eval_batch_size).tolist()
        for i in range(r):
            if which[i]:
                histories[i][-1]["acc"] = accs[i]
        seconds["evaluation"] += time.perf_counter() - tic

    def wants_eval(epoch: int, diverged: bool) -> bool:
        return (epoch == cfg.calib_epochs - 1 or diverged or epoch == cfg.epochs - 1
                or (epoch + 1) % cfg.eval_every == 0)

    with snapshots.written_on_interrupt():
        # Calibration epochs: the reference's `calibrate`, run by run (forward only; ranges frozen afterwards), each
        # run's step captured once (`FastCalibration`).
        calibrations = [FastCalibration(student, run.calibration, device, fast.capture)
                        for run, student in zip(runs, students, strict=True)] if start < cfg.calib_epochs else []
        for epoch in range(start, cfg.calib_epochs):
            tic = time.perf_counter()
            for calibration in calibrations:
                calibration.epoch(cfg.iters_per_epoch)
            for run, student, h in zip(runs, students, histories, strict=True):
                h.append({"epoch": epoch, "phase": "calibration"})
                if epoch == cfg.calib_epochs - 1 and run.cfg.sharpness_iters:  # as the reference, run by run
                    h[-1]["sharpness"] = kd_sharpness(student, teacher, run.images, run.labels,
                                                      make_finetune_augment(run.cfg), run.cfg, run.seed,
                                                      run.cfg.sharpness_iters, device)
            bar.update(cfg.iters_per_epoch)
            seconds["calibration"] += time.perf_counter() - tic  # with the measurement, as the reference's epoch
            evaluate_into(epoch, None, [wants_eval(epoch, False)] * r)
            if checkpoint_path is not None:
                save(epoch, [s.state_dict() for s in students], None, _rng_state(generators, samplers))
            if on_epoch is not None:
                on_epoch(epoch)

        del calibrations  # their graphs' memory pools and image copies: not needed once the ranges are frozen
        stack = StudentStack(students, fast.channels_last)
        names = list(stack.params)
        params = [stack.params[k] for k in names]
        momentum_buffers = [torch.zeros_like(p) for p in params]
        if blob is not None and blob["momentum"] is not None:
            with torch.no_grad():
                for buffer, saved in zip(momentum_buffers, blob["momentum"], strict=True):
                    buffer.copy_(saved)
        lr = torch.zeros(r, device=device)
        loss_sum = torch.zeros(r, device=device)
        runs_index = torch.arange(r, device=device)[:, None]
        static = {"idx": torch.zeros(r, batch, dtype=torch.long, device=device),
                  "theta": torch.zeros(r, batch, 2, 5, device=device)}

        def losses_of(idx: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
            """(R,) KD losses of one step: gather, crop+flip on the device, teacher once, students stacked."""
            x = images[runs_index, idx].flatten(0, 1)  # (R*B, C, H, W)
            x = apply_affine(x, theta.flatten(0, 1)).contiguous(memory_format=memory_format)
            y = labels[runs_index, idx]
            with torch.no_grad():
                teacher_logits = teacher(x).unflatten(0, (r, batch))
            student_logits = stack.forward(x.unflatten(0, (r, batch)))
            return torch.stack([kd_loss_intraq(student_logits[i], teacher_logits[i], y[i], cfg.temperature, cfg.alpha)
                                for i in range(r)])

        compute_losses = compile_loss(losses_of, fast.capture, device)

        def step() -> None:
            losses = compute_losses(static["idx"], static["theta"])
            grads = torch.autograd.grad(losses.sum(), params)
            sgd_step(params, list(grads), momentum_buffers, lr, cfg.momentum, cfg.weight_decay, cfg.nesterov,
                     stack.stacked)
            with torch.no_grad():
                loss_sum.add_(losses.detach())

        runner = StepRunner(step, static, params + momentum_buffers + [loss_sum], fast.capture)

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            drawn = [epoch_schedule(s, g, cfg.iters_per_epoch, height, width, lor)
                     for s, g in zip(samplers, generators, strict=True)]
            idx = torch.stack([d[0] for d in drawn], dim=1)  # (steps, R, B)
            theta = torch.stack([d[1] for d in drawn], dim=1)  # (steps, R, B, 2, 5)
            return to_device(idx, device), to_device(theta, device)

        first_kd = max(start, cfg.calib_epochs)
        rng_next = _rng_state(generators, samplers)
        schedule = draw() if first_kd < cfg.epochs else None
        for epoch in range(first_kd, cfg.epochs):
            tic = time.perf_counter()
            lrs = [multi_step_lr(run.cfg.lr, epoch, run.cfg.lr_steps, run.cfg.lr_decay) for run in runs]
            lr.copy_(torch.tensor(lrs, dtype=lr.dtype), non_blocking=False)
            loss_sum.zero_()
            idx_d, theta_d = schedule
            for t in range(cfg.iters_per_epoch):
                runner(idx=idx_d[t], theta=theta_d[t])
                bar.update()
            if epoch + 1 < cfg.epochs:
                rng_next = _rng_state(generators, samplers)
                schedule = draw()  # the host draws the next epoch while the device works on this one
            epoch_losses = (loss_sum / cfg.iters_per_epoch).tolist()  # the one host sync of the epoch
            seconds["finetune"] += time.perf_counter() - tic
            which = [False] * r
            for i in range(r):
                if not alive[i]:
                    continue
                record = {"epoch": epoch, "phase": "finetune", "lr": lrs[i], "loss": epoch_losses[i]}
                flag_losses(record, histories[i], ("loss",))
                histories[i].append(record)
                which[i] = wants_eval(epoch, record["diverged"])
            evaluate_into(epoch, stack, which)
            for i in range(r):
                if alive[i] and histories[i][-1].get("diverged"):
                    alive[i] = False  # a diverged run stops here (its NaN weights cannot touch the other runs)
                    bar.write(f"run {i}: fine-tuning diverged at epoch {epoch} (non-finite KD loss); stopping it")
            if checkpoint_path is not None:
                save(epoch, stack.unstack(), [b.detach().clone() for b in momentum_buffers], rng_next)
            if on_epoch is not None:
                on_epoch(epoch)
            if not any(alive):
                break
    bar.close()
    if stack.stacked:  # hand the trained weights back to the callers' students
        for student, state in zip(students, stack.unstack(), strict=True):
            student.load_state_dict(state)
    record = fast.record() | {"stacked_runs": r}
    results = []
    for h in histories:
        sharpness, h = split_sharpness(h)
        results.append(FastFinetuneResult(**summarize_history(h, cfg.calib_epochs), history=h, seconds=dict(seconds),
                                          sittings=sittings, fast=record, sharpness=sharpness))
    return results
