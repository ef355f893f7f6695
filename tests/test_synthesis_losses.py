"""IntraQ stage-1 losses (SIL, CE, MDC hinges), the ADI competition term and MDC class centres."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from intraq.synthesis.centers import ClassCenters
from intraq.synthesis.losses import (
    adi_competition_loss,
    cosine_distance,
    draw_sil_targets,
    js_divergence,
    mdc_loss,
    soft_inception_loss,
    target_loss,
)
from intraq.teacher.features import extract_features
from intraq.teacher.models import build_model


def test_sil_matches_hand_computed_value() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax rows: [.5, .5], [.75, .25]
    labels = torch.tensor([0, 1])
    targets = torch.tensor([1.0, 0.9])
    expected = ((0.5 - 1.0) ** 2 + (0.25 - 0.9) ** 2) / 2
    assert soft_inception_loss(logits, labels, targets).item() == pytest.approx(expected, rel=1e-6)
    assert target_loss("sil", logits, labels, targets).item() == pytest.approx(expected, rel=1e-6)


def test_sil_ignores_other_classes() -> None:
    labels = torch.tensor([0])
    targets = torch.tensor([1.0])
    a = torch.tensor([[2.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, math.log(2 * math.e - 1.0)]])  # same p_0, other classes redistributed
    assert soft_inception_loss(a, labels, targets).item() == pytest.approx(
        soft_inception_loss(b, labels, targets).item(), rel=1e-6
    )


def test_ce_is_plain_cross_entropy() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]])
    labels = torch.tensor([2, 0])
    value = target_loss("ce", logits, labels, torch.ones(2))
    assert value.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    with pytest.raises(ValueError):
        target_loss("kl", logits, labels, torch.ones(2))


def test_sil_targets_are_soft_for_about_half() -> None:
    t = draw_sil_targets(4000, 0.6, torch.Generator().manual_seed(0))
    assert t.min() >= 0.6 and t.max() <= 1.0
    soft = (t < 1.0).float().mean().item()
    assert 0.45 < soft < 0.55
    again = draw_sil_targets(4000, 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    assert torch.all(draw_sil_targets(100, 1.0, torch.Generator().manual_seed(1)) == 1.0)


def _feature_at_distance(d: float) -> torch.Tensor:
    """A 2-d feature (norm 2) whose cosine distance to the centre direction (1, 0) is d."""
    angle = math.acos(1.0 - d)
    return torch.tensor([[math.cos(angle), math.sin(angle)]]) * 2.0


def test_mdc_zero_inside_band() -> None:
    center = torch.tensor([[1.0, 0.0]])
    for d in (0.1, 0.4, 0.79):
        lower, upper = mdc_loss(_feature_at_distance(d), center, torch.ones(1), 0.05, 0.8)
        assert lower.item() == pytest.approx(0.0, abs=1e-6) and upper.item() == pytest.approx(0.0, abs=1e-6)


def test_mdc_lower_pushes_away_when_too_close() -> None:
    center = torch.tensor([[1.0, 0.0]])
    f = _feature_at_distance(0.01).requires_grad_(True)
    lower, upper = mdc_loss(f, center, torch.ones(1), 0.05, 0.8)
    assert lower.item() == pytest.approx(0.04, abs=1e-4) and upper.item() == 0.0
    lower.backward()
    stepped = f.detach() - 0.1 * f.grad
    assert cosine_distance(stepped, center).item() > cosine_distance(f.detach(), center).item()


def test_mdc_upper_pulls_back_when_too_far() -> None:
    center = torch.tensor([[1.0, 0.0]])
    f = _feature_at_distance(1.2).requires_grad_(True)
    lower, upper = mdc_loss(f, center, torch.ones(1), 0.05, 0.8)
    assert lower.item() == 0.0 and upper.item() == pytest.approx(0.4, abs=1e-4)
    upper.backward()
    stepped = f.detach() - 0.1 * f.grad
    assert cosine_distance(stepped, center).item() < cosine_distance(f.detach(), center).item()


def test_mdc_masked_images_contribute_nothing() -> None:
    centers = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    near = _feature_at_distance(0.01)
    f = torch.cat([near, torch.tensor([[-1.0, 0.0]])]).requires_grad_(True)  # second: d = 2, masked out
    lower, upper = mdc_loss(f, centers, torch.tensor([1.0, 0.0]), 0.05, 0.8)
    assert lower.item() == pytest.approx(0.04, abs=1e-4)  # mean over the one unmasked image
    assert upper.item() == 0.0
    (lower + upper).backward()
    assert torch.all(f.grad[1] == 0)
    nothing = mdc_loss(f, centers, torch.zeros(2), 0.05, 0.8)
    assert nothing[0].item() == 0.0 and nothing[1].item() == 0.0


def test_js_zero_for_identical_logits_and_adi_term_equals_scale() -> None:
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    assert js_divergence(logits, logits, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert adi_competition_loss(logits, logits, 3.0, 0.2).item() == pytest.approx(0.2, abs=1e-6)


def test_js_matches_kldiv_reference_and_disagreement_lowers_term() -> None:
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(4, 6, generator=gen) * 3
    student = torch.randn(4, 6, generator=gen) * 3
    p = (student / 3).softmax(1)
    q = (teacher / 3).softmax(1)
    m = ((p + q) / 2).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    reference = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(
        q.log(), m, reduction="batchmean"
    )
    assert js_divergence(student, teacher, 3.0).item() == pytest.approx(reference.item(), rel=1e-5)
    terms = [adi_competition_loss(teacher + s * student, teacher, 3.0, 0.2).item() for s in (0.0, 0.5, 2.0)]
    assert terms[0] > terms[1] > terms[2]
    assert 0.0 <= terms[2] <= 0.2


def test_adi_gradient_reaches_the_input_through_the_student() -> None:
    student = torch.nn.Linear(4, 3).requires_grad_(False)
    teacher = torch.nn.Linear(4, 3).requires_grad_(False)
    x = torch.randn(2, 4, requires_grad=True)
    adi_competition_loss(student(x), teacher(x).detach(), 3.0, 0.2).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_class_centers_are_plain_means() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 5, generator=gen)
    labels = torch.randint(0, 4, (30,), generator=gen)
    labels[labels == 3] = 2  # class 3 never appears
    centers = ClassCenters(4)
    centers.add(feats[:10], labels[:10])
    centers.add(feats[10:], labels[10:])
    means = centers.means()
    for c in range(3):
        assert torch.allclose(means[c], feats[labels == c].mean(0), atol=1e-6)
    c, mask = centers.lookup(torch.tensor([0, 3, 2]))
    assert mask.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(c[2], feats[labels == 2].mean(0), atol=1e-6)


def test_empty_centers_give_zero_mask() -> None:
    c, mask = ClassCenters(3).lookup(torch.tensor([0, 1]))
    assert c is None and mask.sum() == 0


def test_centers_from_images_use_teacher_features() -> None:
    torch.manual_seed(0)
    teacher = build_model("digits_cnn", 3).eval()
    images = torch.randn(70, 3, 16, 16)
    labels = torch.arange(70) % 3
    centers = ClassCenters(3)
    centers.add_images(teacher, images, labels)
    feats = extract_features(teacher, images)
    for c in range(3):
        assert torch.allclose(centers.means()[c], feats[labels == c].mean(0), atol=1e-5)
