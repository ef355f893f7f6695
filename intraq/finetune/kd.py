"""Knowledge-distillation losses. The two lineages scale KD differently (trap T13): never mix them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss_intraq(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 20.0,
    alpha: float = 20.0,
) -> torch.Tensor:
    """IntraQ stage 2: alpha*T^2 * KL_batchmean(softmax(t/T) || softmax(s/T)) + CE(s, labels).

    `labels` are the synthetic set's sampled labels (T20): int64 class indices, or (N, C) probabilities.
    """
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )
    return alpha * temperature**2 * kl + F.cross_entropy(student_logits, labels)
