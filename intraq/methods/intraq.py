"""IntraQ (stage 1: BNS + SIL + MDC with LOR; its ablations are `synth.*` settings) and ADI, which replaces MDC
by DeepInversion's competition term against a student (methods §2, §3.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from intraq.methods.base import register
from intraq.methods.finetuned import ImageSetMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

    from intraq.config import RunConfig
    from intraq.data.base import DataSplits
    from intraq.synthesis.base import SynthContext, SyntheticSet
    from intraq.teacher.load import Teacher


def _intraq(ctx: SynthContext) -> SyntheticSet:
    from intraq.synthesis.intraq import generate_intraq

    return generate_intraq(ctx)


def _adi(ctx: SynthContext) -> SyntheticSet:
    from intraq.synthesis.intraq import generate_adi

    return generate_adi(ctx)


class AdiMethod(ImageSetMethod):
    """ADI's images depend on the student they compete with: its quantization and, for `adi_student=quantized`,
    the stage-2 calibration that sets its activation ranges."""

    def set_hash_parts(self, cfg: RunConfig) -> dict[str, Any]:
        from intraq.config import to_dict

        calibration = {k: v for k, v in to_dict(cfg.finetune).items() if k.startswith(("calib", "gdfq"))}
        return {"quant": to_dict(cfg.quant), "finetune_calibration": calibration}

    def make_student(
        self, cfg: RunConfig, teacher: Teacher, data: DataSplits, device: torch.device
    ) -> nn.Module | None:
        if cfg.synth.adi_student == "teacher-copy":  # a fixed FP network, as the released ADI code uses
            import copy

            return copy.deepcopy(teacher.model)
        from intraq.image_sets import calibrated_student

        return calibrated_student(cfg, teacher.model, data, device)


register(ImageSetMethod("intraq", "IntraQ synthetic images (BNS + SIL + MDC, LOR), KD fine-tuning", _intraq,
                        fast_images=True))
register(AdiMethod("adi", "IntraQ's generator with ADI's competition term instead of MDC, KD fine-tuning", _adi,
                   fast_images=True))  # `generate` says that ADI's images are made on the reference path
