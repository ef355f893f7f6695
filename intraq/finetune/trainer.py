"""IntraQ stage 2 (methods §2.2): calibrate activation ranges, then KD fine-tune the quantized student.

The loop follows the official trainer: epochs 0..calib_epochs-1 only calibrate the activation ranges (no
student update); later epochs train on the image set with per-sample RandomResizedCrop + flip, the student
in eval mode (frozen BN statistics, T14), SGD with Nesterov momentum and a multi-step schedule. The test set is
evaluated every `eval_every` epochs; we record the accuracy after calibration only, at the final epoch and at
the best evaluated epoch (test-set model selection, as the lineage reports it, T12), each labelled.

The epoch loop (checkpoint after every epoch, resume, divergence stop, explosion flag) is `loop.run_epochs`,
shared with Qimera's joint training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from intraq.config import FinetuneConfig
from intraq.finetune.kd import kd_loss_intraq
from intraq.finetune.loop import EpochLoop, MultiStepLR, run_epochs
from intraq.finetune.stability import kd_sharpness
from intraq.quantize import set_act_calibration


class CalibrationSource(Protocol):
    """Yields the images that set the activation ranges (a GDFQ generator officially, T10)."""

    def next_batch(self) -> torch.Tensor: ...

    def state_dict(self) -> dict: ...  # what a resumed run needs to continue the same sequence of batches

    def load_state_dict(self, state: dict) -> None: ...


class ImageSetCalibration:
    """Calibrate on the fine-tuning images themselves (the alternative to the official GDFQ generator)."""

    def __init__(self, images: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device):
        self.images, self.batch_size, self.generator, self.device = images, batch_size, generator, device

    def next_batch(self) -> torch.Tensor:
        return self.images[self.draw_index()].to(self.device)

    def draw_index(self) -> torch.Tensor:
        """The next batch's image indices (the fast path gathers them from a copy on the device)."""
        return torch.randint(len(self.images), (min(self.batch_size, len(self.images)),), generator=self.generator)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])


def calibrate(student: nn.Module, source: CalibrationSource, steps: int, on_step: Callable[[], object] | None = None):
    """Forward `steps` calibration batches with the activation quantizers updating their ranges, then freeze."""
    set_act_calibration(student, True)
    for _ in range(steps):
        images = source.next_batch()  # outside no_grad: a GDFQ source takes a generator step here
        with torch.no_grad():
            student(images)
        if on_step is not None:
            on_step()
    set_act_calibration(student, False)


@dataclass
class FinetuneResult:
    acc_after_calibration: float
    acc_final: float
    acc_best: float
    best_epoch: int
    diverged_at_epoch: int | None = None  # first epoch with a non-finite KD loss (the run stopped there)
    exploded_at_epoch: int | None = None  # first epoch whose finite KD loss is > 10x the first epoch's
    history: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    sittings: list[dict] = field(default_factory=list)  # one per (re)start: machine, torch, commit, first epoch
    sharpness: dict | None = None  # with cfg.sharpness_iters: measured when calibration ends (`kd_sharpness`)

    def to_dict(self) -> dict:
        return asdict(self)


def multi_step_lr(base: float, epoch: int, steps: tuple[int, ...], decay: float) -> float:
    """The lineage's `multi_step` policy (methods §1.4): base * decay^(#steps s with epoch + 1 > s)."""
    return base * decay ** sum(1 for s in steps if epoch + 1 > s)


class EpochSampler:
    """Shuffled, drop-last batches; a fresh shuffle every epoch and whenever a pass is exhausted mid-epoch."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def new_epoch(self) -> None:
        self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.order):
            self.new_epoch()
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def make_optimizer(student: nn.Module, cfg: FinetuneConfig) -> torch.optim.SGD:
    """The official stage-2 optimizer: SGD with (Nesterov) momentum and weight decay on every parameter."""
    return torch.optim.SGD(
        student.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


def kd_backward(
    student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
    cfg: FinetuneConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stage-2 step up to the gradients (the caller steps): teacher logits without grad, KD loss, backward.

    Returns the loss and both logits, still on the device (no host sync)."""
    with torch.no_grad():
        teacher_logits = teacher(x)
    student_logits = student(x)
    loss = kd_loss_intraq(student_logits, teacher_logits, y, cfg.temperature, cfg.alpha)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss, student_logits, teacher_logits


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    evaluate: Callable[[nn.Module], float],
    calibration: CalibrationSource,
    augment: Augment,
    cfg: FinetuneConfig,
    device: torch.device,
    seed: int,
    checkpoint_path: Path | None = None,
    progress: bool = True,
    channels_last: bool = True,
) -> FinetuneResult:
    """Run calibration + KD fine-tuning on `images` (normalized float tensors) and `labels`.

    `evaluate(student)` returns test top-1 in percent. With `checkpoint_path`, every finished epoch is saved
    and a later call with the same path continues from the last finished epoch. `channels_last` only changes
    the memory layout (speed), not the result beyond float rounding. A non-finite KD loss stops the run
    (`diverged_at_epoch`); one above 10x the first fine-tuning epoch's is flagged (`exploded_at_epoch`).
    """
    if cfg.calib_epochs < 1 or cfg.epochs <= cfg.calib_epochs:
        raise ValueError(f"need 1 <= calib_epochs < epochs, got {cfg.calib_epochs} and {cfg.epochs}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher.eval().requires_grad_(False).to(memory_format=memory_format)  # NHWC: faster convs, same numbers
    student.eval().requires_grad_(True).to(memory_format=memory_format)  # T14: BN stats frozen; weights train
    generator = torch.Generator().manual_seed(seed)
    sampler = EpochSampler(len(images), cfg.batch_size, generator)
    optimizer = make_optimizer(student, cfg)
    schedule = MultiStepLR(optimizer, list(cfg.lr_steps), cfg.lr_decay)

    # The calibration source's state (for GDFQ a generator with its Adam state, ~15 MB at CIFAR-10 size) matters
    # only until calibration is over; checkpoints after it leave it out, so a resumable run's state stays small.
    calibration_over = [False]

    def train_epoch(epoch: int, bar: tqdm) -> dict:
        if epoch < cfg.calib_epochs:
            calibrate(student, calibration, cfg.iters_per_epoch, on_step=bar.update)
            calibration_over[0] = epoch == cfg.calib_epochs - 1
            record = {"epoch": epoch, "phase": "calibration"}
            if calibration_over[0] and cfg.sharpness_iters:  # kept in the history: a resumed run still has it
                record["sharpness"] = kd_sharpness(student, teacher, images, labels, augment, cfg, seed,
                                                   cfg.sharpness_iters, device)
            return record
        sampler.new_epoch()
        loss_sum = torch.zeros((), device=device)
        for _ in range(cfg.iters_per_epoch):
            idx = sampler.next()
            x = augment(images[idx].to(device, non_blocking=True), generator)
            x = x.contiguous(memory_format=memory_format)
            y = labels[idx].to(device, non_blocking=True)
            loss, _, _ = kd_backward(student, teacher, x, y, optimizer, cfg)
            optimizer.step()
            loss_sum += loss.detach()
            bar.update()
        # one host sync per epoch
        return {"epoch": epoch, "phase": "finetune", "lr": schedule.get_last_lr()[0],
                "loss": loss_sum.item() / cfg.iters_per_epoch}

    def evaluate_student() -> float:
        acc = evaluate(student)
        student.eval()
        return acc

    def should_evaluate(epoch: int, record: dict) -> bool:
        last_calibration = epoch == cfg.calib_epochs - 1
        return last_calibration or epoch == cfg.epochs - 1 or (epoch + 1) % cfg.eval_every == 0

    def state() -> dict:
        blob = {"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "sampler_order": sampler.order, "sampler_pos": sampler.pos}
        if not calibration_over[0]:
            blob["calibration"] = calibration.state_dict()
        return blob

    def restore(blob: dict) -> None:
        student.load_state_dict(blob["student"])
        optimizer.load_state_dict(blob["optimizer"])
        generator.set_state(blob["generator"])
        sampler.order, sampler.pos = blob["sampler_order"], blob["sampler_pos"]
        if "calibration" in blob:  # absent once calibration is over (and in checkpoints of older code)
            calibration.load_state_dict(blob["calibration"])
        # Over once the checkpoint's epoch is the last calibration epoch or later (older code kept the state anyway).
        calibration_over[0] = "calibration" not in blob or blob["epoch"] >= cfg.calib_epochs - 1

    loop = EpochLoop(
        cfg.epochs, cfg.iters_per_epoch, "fine-tune", checkpoint_path, phases=("calibration", "finetune"),
        progress=progress,
    )
    outcome = run_epochs(
        loop, train_epoch, lambda epoch: "calibration" if epoch < cfg.calib_epochs else "finetune",
        should_evaluate, evaluate_student, [schedule], state, restore, device,
    )
    result = summarize(outcome.history, cfg.calib_epochs, outcome.seconds)
    result.sittings = outcome.sittings
    return result


def split_sharpness(history: list[dict]) -> tuple[dict | None, list[dict]]:
    """The sharpness measured when calibration ended (kept in that epoch's entry while the run goes on), and the
    history without it."""
    sharpness = next((h["sharpness"] for h in history if "sharpness" in h), None)
    return sharpness, [{k: v for k, v in h.items() if k != "sharpness"} for h in history]


def summarize(history: list[dict], calib_epochs: int, seconds: dict[str, float]) -> FinetuneResult:
    """After-calibration, final and best-epoch accuracies; ties for best go to the later epoch, as officially."""
    sharpness, history = split_sharpness(history)
    evaluated = [h for h in history if "acc" in h]
    after_calibration = next(h["acc"] for h in evaluated if h["epoch"] == calib_epochs - 1)
    best = max(evaluated, key=lambda h: (h["acc"], h["epoch"]))
    diverged_at = next((h["epoch"] for h in history if h.get("diverged")), None)
    exploded_at = next((h["epoch"] for h in history if h.get("exploded")), None)
    return FinetuneResult(
        acc_after_calibration=after_calibration,
        acc_final=evaluated[-1]["acc"],
        acc_best=best["acc"],
        best_epoch=best["epoch"],
        diverged_at_epoch=diverged_at,
        exploded_at_epoch=exploded_at,
        history=history,
        seconds=seconds,
        sharpness=sharpness,
    )
