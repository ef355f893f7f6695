"""The batched-inversion driver shared by every image-optimizing synthesizer (IntraQ, ADI, DeepInversion).

A set of `num_images` is made in batches of `batch_size`; batch k is an independent optimization saved as its
own file (see `batches.py`), so a later call reuses finished batches (resume after an interruption, or extend
N -> M images). Inside a batch, `run_iterations` checkpoints the optimization state beside the batch file
every `CHECKPOINT_SECONDS` and on an interrupt (Ctrl-C, or SIGTERM through the CLI), so a long batch resumes at
the iteration where it stopped, with the same result as an uninterrupted run; the checkpoint is deleted when
the batch file is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from intraq.artifacts import load_torch, remove_artifact, save_torch
from intraq.interrupts import deferred_interrupts
from intraq.synthesis.batches import batch_path, load_or_make_batch

CHECKPOINT_SECONDS = 60.0  # mid-batch state is saved at most this often (and always on an interrupt)

BatchResult = tuple[torch.Tensor, torch.Tensor, dict]


class BatchCheckpoint:
    """The resumable state of one batch's optimization in a file beside its batch file (written atomically)."""

    def __init__(self, path: Path, every_seconds: float | None = None) -> None:
        self.path = path
        self.every_seconds = CHECKPOINT_SECONDS if every_seconds is None else every_seconds
        self.last_save = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        return load_torch(self.path) if self.path.exists() else None

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= self.every_seconds

    def save(self, state: dict[str, Any]) -> None:
        save_torch(state, self.path)
        self.last_save = time.monotonic()

    def clear(self) -> None:
        remove_artifact(self.path)  # and its checksum file


def partial_path(folder: Path, index: int, size: int) -> Path:
    return folder / f"batch{index:05d}-n{size}.partial.pt"


def run_iterations(
    start: int,
    total: int,
    compute: Callable[[int], Any],
    update: Callable[[int, Any], None],
    snapshot: Callable[[int], dict[str, Any]],
    checkpoint: BatchCheckpoint,
    progress: tqdm,
) -> None:
    """Iterations `start`..`total`-1: `compute(it)` (forward/backward, no state change) then `update(it, out)`.

    `snapshot(done)` is the state after `done` iterations. Ctrl-C and SIGTERM are held back while `update`
    changes state, so on one the state after the last whole iteration is saved; an exception raised inside
    `update` itself leaves the state half-changed, and then the last periodic checkpoint stands. A snapshot is
    never taken after the last iteration, so a resumed batch always runs at least one (its record needs it).
    """
    done: int | None = start
    progress.update(start)
    try:
        for it in range(start, total):
            out = compute(it)
            with deferred_interrupts():
                done = None
                update(it, out)
                done = it + 1
            progress.update(1)
            if done < total and checkpoint.due():
                with deferred_interrupts():
                    checkpoint.save(snapshot(done))
    except KeyboardInterrupt:
        if done is not None and 0 < done < total:
            with deferred_interrupts():
                checkpoint.save(snapshot(done))
        raise


@dataclass
class BatchedSet:
    """Every batch of a set, in order, with each batch's record and how many batches were reused."""

    images: list[torch.Tensor]
    labels: list[torch.Tensor]
    records: list[dict]
    reused: int
    folder: Path
    num_images: int

    def meta(self) -> dict[str, Any]:
        """The set-level fields every batched synthesizer records."""
        return {
            "cache_dir": str(self.folder),
            "num_images": self.num_images,
            "num_batches": len(self.records),
            "batches": self.records,
            "reused_batches": self.reused,
            "generation_seconds": sum(r["seconds"] for r in self.records),
        }


def run_batches(
    folder: Path,
    num_images: int,
    batch_size: int,
    image_shape: tuple[int, int],
    make_batch: Callable[[int, int, BatchCheckpoint, tqdm], BatchResult],
    iterations: int,
    desc: str,
    progress: bool = True,
    postfix_loss: str = "final_total",
    before_next: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> BatchedSet:
    """All batches of a set: finished ones loaded, the others made by `make_batch(k, size, checkpoint, bar)`.

    `image_shape` is (channels, side). `before_next(images, labels)` sees each batch that another follows,
    in order, reused or made (IntraQ's MDC centres grow from them).
    """
    n_batches = math.ceil(num_images / batch_size)
    sizes = [min(batch_size, num_images - k * batch_size) for k in range(n_batches)]
    todo = sum(1 for k, size in enumerate(sizes) if not batch_path(folder, k, size).exists())
    out = BatchedSet([], [], [], 0, folder, num_images)
    bar = tqdm(total=todo * iterations, disable=not progress, desc=desc, unit="it", leave=False)
    with bar:
        for k, size in enumerate(sizes):
            checkpoint = BatchCheckpoint(partial_path(folder, k, size))
            images, labels, record, was_reused = load_or_make_batch(
                batch_path(folder, k, size), size, *image_shape,
                lambda k=k, size=size, checkpoint=checkpoint: make_batch(k, size, checkpoint, bar),
            )
            checkpoint.clear()
            out.reused += was_reused
            bar.set_postfix(batch=k, loss=f"{record[postfix_loss]:.4g}", acc=f"{record['teacher_acc']:.2f}")
            if before_next is not None and k < n_batches - 1:
                before_next(images, labels)
            out.images.append(images)
            out.labels.append(labels)
            out.records.append(record)
    return out
