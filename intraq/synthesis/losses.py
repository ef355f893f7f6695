"""Image-synthesis losses of IntraQ stage 1 (methods §2.1.4-2.1.5) and the ADI competition term (§3.1).

Each loss is a plain function of tensors, so it can be checked against hand-computed values and reused by
other synthesizers. The BN-statistics term lives in `bn_stats.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-6  # the official code's CosineSimilarity eps
MASK_EPS = 1e-6  # keeps the masked mean finite when no image of the batch has a centre yet
ADI_CLAMP = (0.01, 0.99)  # DeepInversion clamps P, Q and M to this range before the KL terms


def draw_sil_targets(
    batch: int, target_pro: float, generator: torch.Generator, soft_prob: float = 0.5
) -> torch.Tensor:
    """Per-image true-class targets t, drawn once per batch: U(target_pro, 1) with prob. `soft_prob`, else 1.

    Drawn on the generator's device (CPU by default) so a batch's targets depend only on its seed.
    """
    soft = torch.rand(batch, generator=generator) < soft_prob
    uniform = target_pro + (1.0 - target_pro) * torch.rand(batch, generator=generator)
    return torch.where(soft, uniform, torch.ones_like(uniform))


def soft_inception_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SIL as coded (trap T2): mean_b (softmax(z)_{b,y_b} - t_b)^2; other classes do not enter at all."""
    prob = logits.softmax(dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    return (prob - targets.to(prob.dtype)).pow(2).mean()


def target_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`sil` (the official squared error) or `ce` (plain cross-entropy, for the SIL-vs-CE ablation)."""
    if kind == "sil":
        return soft_inception_loss(logits, labels, targets)
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    raise ValueError(f"unknown target_loss {kind!r}; expected 'sil' or 'ce'")


def cosine_distance(features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """d = 1 - cos(f, c) per row, in [0, 2]."""
    return 1.0 - F.cosine_similarity(features, centers, dim=1, eps=COSINE_EPS)


def mdc_loss(
    features: torch.Tensor, centers: torch.Tensor, mask: torch.Tensor, margin_low: float, margin_up: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal Distance Constraint: (lower, upper) hinge terms on d = 1 - cos(feature, class centre).

    lower pushes a feature away from its centre until d >= margin_low; upper pulls it back within margin_up.
    Both are masked means (images whose class has no centre yet have mask 0 and contribute nothing).
    """
    d = cosine_distance(features, centers.to(features.dtype))
    mask = mask.to(d.dtype)
    denom = mask.sum() + MASK_EPS
    lower = (mask * F.relu(margin_low - d)).sum() / denom
    upper = (mask * F.relu(d - margin_up)).sum() / denom
    return lower, upper


def js_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """DeepInversion's clamped Jensen-Shannon divergence between softened student and teacher outputs.

    M = (P + Q) / 2 is formed before P, Q and M are clamped to [0.01, 0.99]; each KL is batch-mean
    KL(M || .), as `KLDivLoss(reduction="batchmean")(log P, M)` computes it.
    """
    p = (student_logits / temperature).softmax(dim=1)
    q = (teacher_logits / temperature).softmax(dim=1)
    m = 0.5 * (p + q)
    p, q, m = (t.clamp(*ADI_CLAMP) for t in (p, q, m))
    batch = student_logits.shape[0]
    kl_mp = (m * (m.log() - p.log())).sum() / batch
    kl_mq = (m * (m.log() - q.log())).sum() / batch
    return 0.5 * kl_mp + 0.5 * kl_mq


def adi_competition_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, scale: float
) -> torch.Tensor:
    """scale * (1 - clamp(JS, 0, 1)): minimizing it maximizes teacher-student disagreement."""
    js = js_divergence(student_logits, teacher_logits, temperature)
    return scale * (1.0 - js.clamp(0.0, 1.0))
