"""MDC class centres (methods §2.1.5, trap T5): plain means of teacher features of all finished images.

The official code keeps a list of feature vectors per class and averages it at the start of each batch;
a running float64 sum and count give the same means without the list. Centres are rebuilt only from
the images of the set being generated or extended, never from files of earlier runs (trap T6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from intraq.teacher.features import extract_features

CENTER_FEATURE_BATCH = 64  # the official code's mini-batch for centre features


@dataclass
class ClassCenters:
    """Per-class running sum and count of penultimate teacher features (float64: order of adds is moot)."""

    num_classes: int
    sums: torch.Tensor | None = None  # (C, D) float64, created on the first add
    counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.counts = torch.zeros(self.num_classes, dtype=torch.long)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add finished images' features (B, D) with their labels (B,)."""
        features = features.detach().to("cpu", torch.float64)
        labels = labels.detach().to("cpu", torch.long)
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, features.shape[1], dtype=torch.float64)
        self.sums.index_add_(0, labels, features)
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def add_images(self, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Features of final, un-augmented images (eval, no grad, mini-batches of 64), then `add`."""
        was_training = teacher.training
        teacher.eval()
        try:
            features = extract_features(teacher, images, batch_size=CENTER_FEATURE_BATCH)
        finally:
            teacher.train(was_training)
        self.add(features, labels)

    def means(self) -> torch.Tensor | None:
        """(C, D) float32 centres; rows of classes without any image are zero. None before the first add."""
        if self.sums is None:
            return None
        return (self.sums / self.counts.clamp(min=1).unsqueeze(1).to(torch.float64)).float()

    def lookup(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Detached centres (B, D) (None before the first add) and mask (B,); classes without a centre get 0.

        The official code puts a random placeholder there; with mask 0 its value never matters, so it is zero.
        """
        labels_cpu = labels.detach().to("cpu", torch.long)
        means = self.means()
        if means is None:
            return None, torch.zeros(len(labels_cpu))
        return means[labels_cpu], (self.counts[labels_cpu] > 0).float()
