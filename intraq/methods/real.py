"""Real data: N real training images instead of synthetic ones, the upper reference (the "Real data" row)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from intraq.methods.base import register
from intraq.methods.finetuned import ImageSetMethod

if TYPE_CHECKING:
    from intraq.synthesis.base import SynthContext, SyntheticSet


def _real(ctx: SynthContext) -> SyntheticSet:
    from intraq.synthesis.real import real_images

    return real_images(ctx)


register(ImageSetMethod("real", "a seeded subset of real training images, KD fine-tuning", _real,
                        fast_images=True))  # nothing to generate
