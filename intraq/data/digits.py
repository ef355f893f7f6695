"""`digits`: scikit-learn's bundled 8x8 handwritten digits, the embedded default that needs no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from intraq.config import DataConfig
from intraq.data.base import DataSplits, Normalization, TensorImageDataset
from intraq.data.image_folder import content_identity

IMAGE_SIZE = 16  # 8x8 upsampled 2x: enough room for LOR crops and two stride-2 stages
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_uint8(image_size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 (N, 3, S, S): grey replicated to three channels so every teacher takes RGB."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # values 0..16
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(bunch.target).long()


def build_digits(cfg: DataConfig) -> DataSplits:
    images, labels = load_digits_uint8()
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(images), generator=generator)
    n_test = int(len(images) * TEST_FRACTION)
    test_idx, train_idx = order[:n_test], order[n_test:]
    train_float = images[train_idx].float() / 255.0
    mean = tuple(float(v) for v in train_float.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in train_float.std(dim=(0, 2, 3)))
    norm = Normalization(mean=mean, std=std)
    split = {
        "train_images": images[train_idx], "train_labels": labels[train_idx], "test_images": images[test_idx],
        "test_labels": labels[test_idx], "class_names": [str(i) for i in range(10)],
    }
    return DataSplits(
        name="digits",
        train=TensorImageDataset(images[train_idx], labels[train_idx], norm),
        test=TensorImageDataset(images[test_idx], labels[test_idx], norm),
        num_classes=10,
        norm=norm,
        image_size=IMAGE_SIZE,
        class_names=[str(i) for i in range(10)],
        identity=content_identity("digits", split),
    )
