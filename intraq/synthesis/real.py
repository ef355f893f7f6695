"""`real`: N real training images, the supplementary's "Real data" row and the upper reference (no synthesis)."""

from __future__ import annotations

import torch

from intraq.data.base import TensorImageDataset
from intraq.synthesis.base import SYNTHESIZERS, SynthContext, SyntheticSet


@SYNTHESIZERS.register("real")
def real_images(ctx: SynthContext) -> SyntheticSet:
    """A seeded uniform random subset of the train split, normalized as the teacher expects (T18)."""
    train = ctx.data.train
    n = ctx.cfg.synth.num_images
    if n > len(train):
        raise ValueError(f"synth.num_images={n} but the {ctx.data.name} train split has {len(train)} images")
    generator = torch.Generator().manual_seed(ctx.cfg.seed)
    indices = torch.randperm(len(train), generator=generator)[:n]
    if isinstance(train, TensorImageDataset):
        images, labels = train.batch(indices)
    else:
        pairs = [train[int(i)] for i in indices]
        images = torch.stack([p[0] for p in pairs])
        labels = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return SyntheticSet(
        images=images.float(), labels=labels.long(), meta={"method": "real", "seed": ctx.cfg.seed, "num_images": n}
    )
