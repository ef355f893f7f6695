"""Per-batch files of the image-optimizing synthesizers (IntraQ, ADI, DeepInversion): seeds, names, I/O.

Each batch is an independent optimization seeded from (seed, batch index) and saved atomically on its own,
so a set can be resumed after an interruption or extended from N to M images without redoing the first N.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from intraq.artifacts import load_torch, save_torch
from intraq.errors import UserInputError


def batch_seed(seed: int, batch_index: int) -> int:
    """A 63-bit seed for batch k that depends only on (seed, k): batches can be made in any order."""
    digest = hashlib.sha256(f"intraq-bench/synthesis/{seed}/{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def state_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state dict, so a cache folder is never reused with other teacher weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def frozen(model: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; both are restored afterwards."""
    if model is None:
        yield
        return
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def batch_path(folder: Path, index: int, size: int) -> Path:
    return folder / f"batch{index:05d}-n{size}.pt"


def save_batch(path: Path, images: torch.Tensor, labels: torch.Tensor, record: dict) -> None:
    save_torch({"images": images, "labels": labels, "record": record}, path)


def load_batch(path: Path, size: int, channels: int, side: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A finished batch file, checked for shape; anything else is an error that says to delete it."""
    blob = load_torch(path)
    ok = (
        isinstance(blob, dict)
        and {"images", "labels", "record"} <= set(blob)
        and tuple(blob["images"].shape) == (size, channels, side, side)
        and tuple(blob["labels"].shape) == (size,)
    )
    if not ok:
        raise UserInputError(f"{path} is not a finished synthesis batch of the expected shape; delete it to regenerate")
    return blob["images"], blob["labels"], blob["record"]


def load_or_make_batch(
    path: Path, size: int, channels: int, side: int, make: Callable[[], tuple[torch.Tensor, torch.Tensor, dict]]
) -> tuple[torch.Tensor, torch.Tensor, dict, bool]:
    """The finished batch at `path`, or `make()` it and save it; the flag says whether it was reused."""
    if path.exists():
        return (*load_batch(path, size, channels, side), True)
    images, labels, record = make()
    save_batch(path, images, labels, record)
    return images, labels, record, False
