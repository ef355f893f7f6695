"""One API for every data set: normalized float images, labels, class count, normalization constants."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std of the teacher's input space; synthetic images live in this normalized space."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _shape(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, -1, 1, 1) if x.dim() == 4 else (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(view)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(view)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        mean, std = self._shape(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._shape(x)
        return x * std + mean


class TensorImageDataset(Dataset):
    """uint8 images (N, C, H, W) kept in memory, decoded once; normalized to float on access.

    `batch(indices)` normalizes a whole batch in one op, which evaluation and real-data fine-tuning use
    instead of a per-sample DataLoader.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, norm: Normalization) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.norm = norm

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.norm.normalize(self.images[index].float() / 255.0)
        return image, int(self.labels[index])

    def batch(self, indices: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.norm.normalize(self.images[indices].float() / 255.0)
        return images, self.labels[indices]

    def to(self, device: torch.device) -> TensorImageDataset:
        """The same data set held on `device` (itself if already there): a loop on a GPU then copies no batch from
        the host (CIFAR-10's 50,000 train images are 150 MB as uint8)."""
        if self.images.device == device:
            return self
        return TensorImageDataset(self.images.to(device), self.labels.to(device), self.norm)


@dataclass
class DataSplits:
    """A data set by name: train and test splits plus what the teacher and the synthesizers need to know."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    norm: Normalization
    image_size: int
    channels: int = 3
    class_names: list[str] = field(default_factory=list)
    # Name + content hash (pixels, labels, classes): results of two data sets never share a name.
    identity: str = ""
