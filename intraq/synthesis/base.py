"""What every image source produces (a `SyntheticSet`) and the registry that picks one by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from intraq.artifacts import load_torch, save_torch
from intraq.config import RunConfig
from intraq.data.base import DataSplits
from intraq.errors import UserInputError
from intraq.registry import Registry

if TYPE_CHECKING:
    from intraq.fast.settings import FastSettings


@dataclass
class SyntheticSet:
    """Float32 images in the teacher's normalized space (never 8-bit, trap T7) with their labels.

    `labels` is int64 (N,) for hard labels or float (N, C) for soft ones (Qimera's mixed samples).
    `meta` records method, config hash, seed and whatever the method needs to extend the set later.
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> Path:
        return save_torch({"images": self.images, "labels": self.labels, "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        blob = load_torch(path)
        if not isinstance(blob, dict) or not {"images", "labels", "meta"} <= set(blob):
            raise UserInputError(f"{path} is not a synthetic set written by intraq-bench; delete it to regenerate")
        return cls(images=blob["images"], labels=blob["labels"], meta=blob["meta"])


@dataclass
class SynthContext:
    """Everything a synthesizer may read. `student` is only set for methods that need one (ADI)."""

    cfg: RunConfig
    teacher: nn.Module
    data: DataSplits
    device: torch.device
    work_dir: Path  # where the method may keep resumable partial state
    student: nn.Module | None = None
    progress: bool = True
    # How to compute, not what: none of these is part of any hash (results agree within float noise).
    channels_last: bool = True  # NHWC activations: ~1.7x faster convolutions on CPU (oneDNN) and GPU
    bf16_autocast: bool = False  # GPU option: teacher forward/backward in bfloat16
    compile: bool = False  # GPU option: torch.compile the teacher
    fast: FastSettings | None = None  # the fast path (intraq.fast) for the methods that have one; None: reference


Synthesizer = Callable[[SynthContext], SyntheticSet]
SYNTHESIZERS: Registry[Synthesizer] = Registry("synthesizer")
