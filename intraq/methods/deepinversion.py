"""DeepInversion as its own image generator (methods §3), and ADI as the paper ran it: DeepInversion's pipeline
with the competition term against a student (`deepinversion-adi`, methods §3.1, §3.5); both with KD fine-tuning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from intraq.methods.base import register
from intraq.methods.finetuned import ImageSetMethod
from intraq.methods.intraq import AdiMethod

if TYPE_CHECKING:
    from intraq.synthesis.base import SynthContext, SyntheticSet


def _deepinversion(ctx: SynthContext) -> SyntheticSet:
    from intraq.synthesis.deepinversion import synthesize_deepinversion

    return synthesize_deepinversion(ctx)


register(ImageSetMethod("deepinversion", "DeepInversion images (official loss and jitter), KD fine-tuning",
                        _deepinversion))


def _deepinversion_adi(ctx: SynthContext) -> SyntheticSet:
    """DeepInversion's preset (its optimiser, iterations, lr, jitter/flip, TV and l2 priors, BN feature weights)
    plus ADI's Jensen-Shannon competition term (`synth.adi_scale`, `synth.adi_temperature`: 0.2 and T = 3) against
    the student `synth.adi_student` names: the quantized network before fine-tuning (default), or a fixed FP copy
    of the teacher (what the released ADI code competes with)."""
    import dataclasses

    from intraq.synthesis.deepinversion import effective_config, generate_deepinversion

    di = effective_config(ctx.cfg, ctx.data.name, ctx.data.image_size)
    s = ctx.cfg.synth
    adi = dataclasses.replace(di, adi_scale=s.adi_scale, adi_temperature=s.adi_temperature)
    return generate_deepinversion(ctx, adi)


register(AdiMethod("deepinversion-adi", "ADI as the paper ran it: DeepInversion's pipeline with the competition term "
                   "against a student, KD fine-tuning", _deepinversion_adi))
