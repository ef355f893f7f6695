"""The reference loops' random draws, replayed on the CPU generator and handed to the device once per epoch.

Stage 2 of the reference draws, step by step from one CPU generator: the sampler's indices (a fresh
permutation at each epoch and whenever a pass runs out) and the per-image RandomResizedCrop + flip of
`make_finetune_augment`. `epoch_schedule` makes exactly those draws in exactly that order for a whole epoch
and returns them as two tensors, (steps, batch) indices and (steps, batch, 2, 5) crop transforms, so the device
loop does no sampling and no host-device traffic per step, and the crops of a whole batch are one
`affine_grid` + `grid_sample` on the device (the reference already batches them; no per-image loop anywhere).
"""

from __future__ import annotations

import torch

from intraq.config import FinetuneConfig
from intraq.finetune.trainer import EpochSampler
from intraq.synthesis.lor import LORSettings, lor_transforms, sample_lor_params


def finetune_lor_settings(cfg: FinetuneConfig) -> LORSettings:
    """The settings `intraq.finetune.augment.make_finetune_augment` uses (crop, plus flip if cfg.flip)."""
    return LORSettings(ops=("crop", "flip") if cfg.flip else ("crop",), scale=tuple(cfg.crop_scale))


def epoch_schedule(
    sampler: EpochSampler, generator: torch.Generator, steps: int, height: int, width: int, settings: LORSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fine-tuning epoch's draws, as the reference loop makes them: new_epoch(), then per step the batch
    indices and the crop/flip parameters (in that order, from the same generator)."""
    sampler.new_epoch()
    indices, thetas = [], []
    for _ in range(steps):
        idx = sampler.next()
        params = sample_lor_params(len(idx), height, width, settings, generator)
        indices.append(idx)
        thetas.append(lor_transforms(params, height, width))
    return torch.stack(indices), torch.stack(thetas)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One asynchronous upload (pinned staging on CUDA)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
