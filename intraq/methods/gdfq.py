"""GDFQ: images sampled from a generator trained against the teacher (methods §6.1), KD fine-tuning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from intraq.methods.base import register
from intraq.methods.finetuned import ImageSetMethod

if TYPE_CHECKING:
    from intraq.config import RunConfig
    from intraq.synthesis.base import SynthContext, SyntheticSet


def _gdfq(ctx: SynthContext) -> SyntheticSet:
    from intraq.synthesis.gdfq import synthesize_gdfq

    return synthesize_gdfq(ctx)


class GdfqMethod(ImageSetMethod):
    """The generator's lr and latent size live in the finetune section (shared with the calibration source)."""

    def set_hash_parts(self, cfg: RunConfig) -> dict[str, Any]:
        return {"gdfq": {"lr": cfg.finetune.gdfq_lr, "latent_dim": cfg.finetune.gdfq_latent_dim}}


register(GdfqMethod("gdfq", "images from a GDFQ generator trained against the teacher, KD fine-tuning", _gdfq))
