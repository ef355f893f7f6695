"""DeepInversion (and its ADI form, `adi_scale > 0`) as its own image generator (methods §3), KD fine-tuning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from intraq.methods.base import register
from intraq.methods.finetuned import ImageSetMethod

if TYPE_CHECKING:
    from intraq.synthesis.base import SynthContext, SyntheticSet


def _deepinversion(ctx: SynthContext) -> SyntheticSet:
    from intraq.synthesis.deepinversion import synthesize_deepinversion

    return synthesize_deepinversion(ctx)


register(ImageSetMethod("deepinversion", "DeepInversion images (official loss and jitter), KD fine-tuning",
                        _deepinversion))
