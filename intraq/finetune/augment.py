"""Fine-tuning augmentation (methods §2.2.2): per-sample RandomResizedCrop + horizontal flip on the tensors.

The official loader applies torchvision transforms image by image; this draws the same per-image boxes and
flips as tensors and resamples the batch in one op (the LOR machinery, without its per-iteration coin).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from intraq.config import FinetuneConfig
from intraq.synthesis.lor import LORSettings, apply_lor, sample_lor_params


def make_finetune_augment(cfg: FinetuneConfig) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    settings = LORSettings(ops=("crop", "flip") if cfg.flip else ("crop",), scale=tuple(cfg.crop_scale))

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        params = sample_lor_params(len(x), x.shape[-2], x.shape[-1], settings, generator)
        return apply_lor(x, params)

    return augment
