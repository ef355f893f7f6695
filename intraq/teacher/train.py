"""The project's own teacher recipe: SGD + Nesterov, cosine schedule, crop+flip; resumable per epoch."""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import Timeout
from torch import nn
from tqdm import tqdm

from intraq.artifacts import load_torch, remove_artifact, save_torch
from intraq.config import TeacherConfig
from intraq.data.augment import random_crop_flip
from intraq.data.base import DataSplits, TensorImageDataset
from intraq.errors import UserInputError
from intraq.evaluate import evaluate
from intraq.interrupts import deferred_interrupts
from intraq.locks import lock_holder, marked_lock
from intraq.results import sitting
from intraq.teacher.checkpoint import load_teacher_weights, save_teacher
from intraq.teacher.models import build_model


def committed_reason(path: Path) -> str | None:
    """Why `path` is a committed file that training must not replace silently: under teachers/ or tracked by git."""
    from intraq.teacher.load import REPO_ROOT

    resolved = path.resolve()
    if resolved.is_relative_to((REPO_ROOT / "teachers").resolve()):
        return "it is one of the committed teachers (teachers/)"
    if not resolved.parent.is_dir():
        return None
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "--", resolved.name], cwd=resolved.parent, capture_output=True
        ).returncode == 0
    except OSError:
        return None
    return "git tracks it" if tracked else None


def check_train_target(out: Path, explicit: bool, force: bool) -> None:
    """`intraq teacher train` never replaces a file by accident: an existing checkpoint needs --force, and a
    committed one (teachers/, or tracked by git) needs --out naming it as well."""
    if not out.exists():
        return
    reason = committed_reason(out)
    if reason and not (explicit and force):
        raise UserInputError(
            f"{out} exists and {reason}; training does not replace it by default. Train elsewhere with "
            f"--out NEW_PATH, or, to replace it on purpose, pass --out {out} --force"
        )
    if not force:
        raise UserInputError(f"{out} exists; pass --force to retrain it, or --out NEW_PATH to train elsewhere")


def training_lock_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".lock")


def training_marker_path(out_path: Path) -> Path:
    """Who trains the teacher at `out_path` right now (host, pid, start); removed when that training stops."""
    return out_path.with_name(out_path.name + ".training.json")


@contextmanager
def exclusive_training(out_path: Path, wait: bool) -> Iterator[None]:
    """Hold the lock of the teacher at `out_path` for one training process.

    Two processes resuming the same `.state` would each continue it and overwrite each other's checkpoint and
    sidecar (a sidecar can end up describing the other process's weights). With `wait`, a second process waits
    (an automatic training inside a run: it then finds the finished teacher); without, it is refused at once."""
    lock, marker = training_lock_path(out_path), training_marker_path(out_path)
    with ExitStack() as held:
        try:
            held.enter_context(marked_lock(lock, marker, timeout=-1 if wait else 0))
        except Timeout:
            holder = lock_holder(lock, marker) or {}
            who = ", ".join(f"{k} {holder[k]}" for k in ("host", "pid", "started") if k in holder) or "unknown"
            raise UserInputError(
                f"another process is training the teacher at {out_path} ({who}); wait for it to finish (it resumes "
                f"from {out_path.with_suffix('.state')} if stopped), or train elsewhere with --out NEW_PATH"
            ) from None
        yield


def train_teacher(
    cfg: TeacherConfig,
    data: DataSplits,
    out_path: Path,
    seed: int,
    device: torch.device,
    progress: bool = True,
    eval_every: int = 10,
    wait: bool = False,
    channels_last: bool = False,
    compile: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `cfg.name` on `data.train`, write checkpoint + sidecar to `out_path`; resumes from `<out>.state`.

    Every epoch's mean training loss, and the test top-1 every `eval_every` epochs (0: only at the end), are kept
    in `history` (state and sidecar): a teacher that trains for hours shows where it stands, and the record keeps
    its curve. The checkpoint is always the last epoch's weights (no selection on the test split), and evaluating
    in between changes nothing in training (eval mode, no randomness), so the weights do not depend on it.

    One process at a time trains a given `out_path` (`exclusive_training`): another is refused, or with `wait`
    waits and, when the teacher exists once it holds the lock, returns that one instead of training again.

    `channels_last` and `compile` (torch.compile of the training forward) only change how the steps run (a bare
    ResNet-20 step on the 2-core CPU: 1.24x and 1.40x together; the whole loop ~1.2x): same recipe and draws, each
    step equal up to float rounding (tested), so the weights drift apart only by rounding that SGD amplifies. Each
    sitting records which it used; the checkpoint is saved in the default memory format."""
    if eval_every < 0:
        raise UserInputError(f"eval_every must be >= 0 (0: evaluate only at the end), got {eval_every}")
    if not isinstance(data.train, TensorImageDataset):
        raise UserInputError(
            f"the teacher recipe trains on in-memory data sets (digits, cifar10); for {data.name} use a "
            "pretrained teacher (teacher.source=torchvision or pytorchcv, or teacher.checkpoint=FILE)"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_training(out_path, wait):
        if wait and out_path.exists():  # finished by another process since the caller looked (waiting or not)
            model = build_model(cfg.name, data.num_classes, data.channels)
            sidecar = load_teacher_weights(model, out_path)
            return model.to(device).eval(), sidecar
        return _train(cfg, data, out_path, seed, device, progress, eval_every, channels_last, compile)


def _train(
    cfg: TeacherConfig, data: DataSplits, out_path: Path, seed: int, device: torch.device, progress: bool,
    eval_every: int, channels_last: bool = False, compile: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(seed)
    model = build_model(cfg.name, data.num_classes, data.channels).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # before the optimizer: new buffers take the parameters' layout
    forward = torch.compile(model) if compile else model  # same module, same parameters: only the forward compiled
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.train_lr, momentum=cfg.train_momentum, nesterov=True,
        weight_decay=cfg.train_weight_decay,
    )
    n = len(data.train)
    steps_per_epoch = n // cfg.train_batch_size
    if steps_per_epoch < 1 or cfg.train_epochs < 1:
        raise UserInputError(
            f"the teacher recipe needs at least one epoch of full batches: {n} train images, "
            f"teacher.train_batch_size={cfg.train_batch_size}, teacher.train_epochs={cfg.train_epochs}; "
            "lower the batch size or add images"
        )
    total_steps = cfg.train_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    state_path = out_path.with_suffix(".state")
    start_epoch, elapsed, sittings, history, history_from = 0, 0.0, [], [], 0
    if state_path.exists():
        state = load_torch(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for param in model.parameters():  # a state saved in another layout: its momentum in this run's (speed only)
            buffer = optimizer.state[param].get("momentum_buffer")
            if buffer is not None and buffer.dim() == 4:
                optimizer.state[param]["momentum_buffer"] = buffer.contiguous(memory_format=memory_format)
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, elapsed = state["epoch"] + 1, state["elapsed"]
        # A state from before history was kept: its epochs have none, and the record says from where it starts.
        history = state.get("history", [])
        history_from = state.get("history_from_epoch", 0 if "history" in state else start_epoch)
        sittings = state.get("sittings") or [{"first_epoch": 0, "last_epoch": state["epoch"], "unrecorded": (
            "a state written before sittings were kept: where these epochs ran is in the commits that stored it")}]
    # One entry per (re)start: a teacher trained over several sessions and machines says which epochs ran where.
    sittings.append({**sitting(device), "channels_last": channels_last, "compiled": compile,
                     "first_epoch": start_epoch, "last_epoch": None})
    # Resident on the device: on a GPU no batch is copied from the host (the same draws; the normalization then runs
    # on the GPU, equal up to float rounding).
    train = data.train.to(device)
    test = data.test.to(device) if isinstance(data.test, TensorImageDataset) else data.test
    bar = tqdm(range(start_epoch, cfg.train_epochs), desc=f"train {cfg.name}", disable=not progress)
    for epoch in bar:
        tic = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        loss_sum = torch.zeros((), device=device)
        steps = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=not progress)
        for step in steps:  # minutes per epoch on a CPU: the inner bar shows that it moves
            x, y = train.batch(order[step * cfg.train_batch_size : (step + 1) * cfg.train_batch_size])
            if cfg.train_augment:
                x = random_crop_flip(x, padding=max(1, data.image_size // 8), generator=generator)
            loss = F.cross_entropy(forward(x.contiguous(memory_format=memory_format)), y)  # already on the device
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
        elapsed += time.perf_counter() - tic
        entry = {"epoch": epoch, "train_loss": loss_sum.item() / steps_per_epoch, "lr": scheduler.get_last_lr()[0]}
        # A finished epoch is never lost to a Ctrl-C/SIGTERM during its evaluation or save (a second one stops at once).
        with deferred_interrupts():
            if eval_every and (epoch + 1) % eval_every == 0 and epoch < cfg.train_epochs - 1:  # the last: below
                entry["test_top1"] = evaluate(model, test, device=device)
            history.append(entry)
            sittings[-1]["last_epoch"] = epoch
            save_torch(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch,
                    "elapsed": elapsed,
                    "sittings": sittings,
                    "history": history,
                    "history_from_epoch": history_from,
                },
                state_path,
            )
        bar.set_postfix(epoch=epoch, loss=f"{entry['train_loss']:.3f}",
                        **({"test": f"{entry['test_top1']:.2f}%"} if "test_top1" in entry else {}))
    model = model.to(memory_format=torch.contiguous_format).eval()  # the checkpoint as any other
    accuracy = evaluate(model, test, device=device)
    if history and history[-1]["epoch"] == cfg.train_epochs - 1:
        history[-1]["test_top1"] = accuracy
    info = {
        "architecture": cfg.name,
        "data": data.name,
        "test_top1": accuracy,
        "seed": seed,
        "recipe": {k: v for k, v in vars(cfg).items() if k.startswith("train_")},
        "command": " ".join(sys.argv),
        "wall_seconds": elapsed,
        "machine": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # CPU float summation order, hence the weights, depends on it
        "sittings": [sit for sit in sittings if sit["last_epoch"] is not None],  # a restart that ran no epoch: none
        "history": history,  # per epoch: train_loss, lr at its end, test_top1 where evaluated
        "history_from_epoch": history_from,  # > 0: the first epochs ran before history was kept
    }
    with deferred_interrupts():  # checkpoint, sidecar and the state's removal go together
        sidecar = save_teacher(model, out_path, info)
        remove_artifact(state_path)
    return model, sidecar
