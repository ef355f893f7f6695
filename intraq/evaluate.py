"""Top-1 accuracy on a test split; in-memory splits are evaluated as whole tensor batches (no DataLoader)."""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from intraq.data.base import TensorImageDataset


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> float:
    """Top-1 accuracy in percent. The model is put in eval mode and left there."""
    model.eval()
    device = torch.device(device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = len(dataset)
    if isinstance(dataset, TensorImageDataset):
        batches = (dataset.batch(slice(s, s + batch_size)) for s in range(0, total, batch_size))
        n_batches = (total + batch_size - 1) // batch_size
    else:
        workers = min(8, os.cpu_count() or 1)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
        batches, n_batches = iter(loader), len(loader)
    for images, labels in tqdm(batches, total=n_batches, desc="evaluate", disable=not progress, leave=False):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        correct += (model(images).argmax(dim=1) == labels).sum()
    return 100.0 * correct.item() / max(total, 1)
