"""The methods that make an image set and fine-tune the quantized student on it with KD (IntraQ stage 2).

One class for all of them: the image source is the only difference (`synthesize`), plus, for some, what else
decides the set (`set_hash_parts`) and a student the synthesis competes with (`make_student`, ADI).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from intraq.methods.base import Method, MethodContext, MethodOutcome

if TYPE_CHECKING:
    import torch
    from torch import nn

    from intraq.config import RunConfig
    from intraq.data.base import DataSplits
    from intraq.synthesis.base import SynthContext, SyntheticSet
    from intraq.teacher.load import Teacher


class ImageSetMethod(Method):
    """Image set (made once per seed, hash-named) -> quantize -> calibrate activation ranges -> KD fine-tuning."""

    sections = ("synth", "finetune")
    makes_images = True

    def __init__(self, name: str, summary: str, synthesize: Callable[[SynthContext], SyntheticSet]) -> None:
        self.name, self.summary, self._synthesize = name, summary, synthesize

    def synthesize(self, ctx: SynthContext) -> SyntheticSet:
        return self._synthesize(ctx)

    def set_hash_parts(self, cfg: RunConfig) -> dict[str, Any]:
        """What decides the image set besides data, teacher, synth settings and seed (part of its file name)."""
        return {}

    def make_student(
        self, cfg: RunConfig, teacher: Teacher, data: DataSplits, device: torch.device
    ) -> nn.Module | None:
        """A network the synthesis needs besides the teacher (`SynthContext.student`); most need none."""
        return None

    def run(self, ctx: MethodContext) -> MethodOutcome:
        from intraq.finetune.augment import make_finetune_augment
        from intraq.finetune.trainer import finetune
        from intraq.image_sets import get_image_set, make_calibration_source
        from intraq.quantize import describe_quantization, quantize_model

        cfg, teacher = ctx.cfg, ctx.teacher
        image_set, generation_seconds = get_image_set(
            cfg, teacher, ctx.data, ctx.device, ctx.paths, ctx.progress, ctx.compile
        )
        images = image_set.images
        student = quantize_model(teacher.model, cfg.quant).to(ctx.device)
        source = make_calibration_source(cfg, teacher.model, ctx.data, images, ctx.device)
        result = finetune(
            student, teacher.model, images, image_set.labels, ctx.test_accuracy, source,
            make_finetune_augment(cfg.finetune), cfg.finetune, ctx.device, cfg.seed,
            checkpoint_path=ctx.run_dir / "finetune.pt", progress=ctx.progress,
        )
        meta = {k: v for k, v in image_set.meta.items() if not _is_tensor(v)}
        return MethodOutcome(
            after_calibration=result.acc_after_calibration, final_epoch=result.acc_final, best_epoch=result.acc_best,
            best_epoch_index=result.best_epoch, diverged_at_epoch=result.diverged_at_epoch,
            exploded_at_epoch=result.exploded_at_epoch, seconds={"generation": generation_seconds, **result.seconds},
            history=result.history,
            extras={
                "synthesis": meta, "quantization": describe_quantization(student),
                "finetune_sittings": result.sittings,
            },
        )


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
