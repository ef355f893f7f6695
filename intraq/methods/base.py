"""What a method is: a registered entry that turns (data, teacher) into a quantized student's accuracies.

Every way a case can make its student (IntraQ and its ablations, ADI, DeepInversion, GDFQ and real images with
KD fine-tuning; Qimera's joint loop; SQuant's post-training quantization) is one `Method` in `METHODS`,
registered when its module is imported, and returns one `MethodOutcome`. The pipeline only does
data -> teacher -> method -> record. Nothing here imports torch: the CLI lists and checks method names without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from intraq.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from intraq.config import RunConfig
    from intraq.data.base import DataSplits
    from intraq.fast.settings import FastSettings
    from intraq.pipeline import RunPaths
    from intraq.teacher.load import Teacher

BASE_SECTIONS = ("profile", "data", "teacher", "quant")  # decide every method's numbers


@dataclass
class MethodOutcome:
    """A method's numbers: test top-1 (%) after activation-range calibration only, at the final and the best
    evaluated epoch (test-set selection, T12; None index when there is one evaluation), the epochs at which the
    run diverged (non-finite loss) or exploded (loss > 10x its first trained epoch's; None: it did not), seconds
    per phase, the per-epoch history and the method's own record fields (e.g. `synthesis`, `quantization`,
    `squant`), which the record keeps under their names."""

    after_calibration: float
    final_epoch: float
    best_epoch: float
    best_epoch_index: int | None
    diverged_at_epoch: int | None = None
    exploded_at_epoch: int | None = None  # first epoch whose finite loss exceeded 10x the first trained epoch's
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodContext:
    """What a method may use: the built config, data and teacher, where to keep its artifacts, how to evaluate."""

    cfg: RunConfig
    data: DataSplits
    teacher: Teacher
    device: torch.device
    paths: RunPaths
    run_dir: Path  # this case and seed's own folder (fine-tuning checkpoints); emptied once its record is written
    test_accuracy: Callable[[nn.Module], float]  # test top-1 (%) of a model on the data's test split
    progress: bool = True
    compile: bool = False
    fast: FastSettings | None = None  # the fast path (intraq.fast) where a method has one; None: the reference


class Method:
    """One registered way to make and evaluate a quantized student.

    `sections`: the config sections besides profile, data, teacher and quant that decide its numbers (the rest is
    left out of its case hash). `makes_images`: it fine-tunes on an image set that `intraq generate` can make.
    `fast_path`: some of its stages run on the fast path (`intraq.fast`) when a run asks for it.
    """

    name: str
    summary: str
    sections: ClassVar[tuple[str, ...]] = ()
    makes_images: ClassVar[bool] = False
    fast_path: ClassVar[bool] = False

    def run(self, ctx: MethodContext) -> MethodOutcome:
        raise NotImplementedError


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Add `method` to `METHODS` under its name (at import of its module)."""
    return METHODS.register(method.name)(method)


def get_method(name: str) -> Method:
    """The registered method `name`; an unknown name is a `UserInputError` listing the known ones."""
    return METHODS.get(name)
