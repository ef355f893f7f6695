"""Qimera: superposed embeddings, its generator, its KD scale and a tiny joint run."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from intraq.baselines.qimera import (
    QimeraGenerator,
    qimera_kd_loss,
    run_qimera,
    sample_mixed_embeddings,
    sample_single_embeddings,
    soft_cross_entropy,
    standardize_per_slot,
)
from intraq.config import RunConfig
from intraq.data.base import DataSplits, Normalization, TensorImageDataset
from intraq.teacher.models import build_model


def _quantizer_ready() -> bool:
    try:
        module = importlib.import_module("intraq.quantize")
    except ImportError:
        return False
    return hasattr(module, "quantize_model") and hasattr(module, "set_act_calibration")


def test_single_embeddings_standardized_per_sample() -> None:
    table = torch.randn(10, 64) * 3 + 2
    inp = sample_single_embeddings(table, 16, torch.Generator().manual_seed(0))
    assert inp.embeddings.shape == (16, 64) and inp.labels.shape == (16,) and not inp.mixed
    assert torch.allclose(inp.embeddings.mean(dim=1), torch.zeros(16), atol=1e-5)
    assert torch.allclose(inp.embeddings.var(dim=1, unbiased=False), torch.ones(16), atol=1e-3)
    assert torch.equal(inp.soft_labels, F.one_hot(inp.labels, 10).float())


def test_mixed_embeddings_weights_and_soft_labels() -> None:
    num_classes, k = 3, 4  # few classes, many slots: repeated labels are certain
    table = torch.randn(num_classes, 8)
    inp = sample_mixed_embeddings(table, 32, k, torch.Generator().manual_seed(1))
    assert inp.mixed
    assert inp.embeddings.shape == (32, k, 8) and inp.labels.shape == (32, k) and inp.weights.shape == (32, k)
    assert torch.allclose(inp.weights.sum(dim=1), torch.ones(32), atol=1e-6)
    assert (inp.weights > 0).all()
    assert torch.allclose(inp.soft_labels.sum(dim=1), torch.ones(32), atol=1e-6)
    repeated = 0
    for b in range(32):
        expected = torch.zeros(num_classes)
        for slot in range(k):
            expected[inp.labels[b, slot]] += inp.weights[b, slot]
        assert torch.allclose(inp.soft_labels[b], expected, atol=1e-6)
        repeated += int(len(set(inp.labels[b].tolist())) < k)
    assert repeated > 0
    # per mixture slot across the batch (as coded), not per sample
    assert torch.allclose(inp.embeddings.mean(dim=(0, 2)), torch.zeros(k), atol=1e-5)
    assert torch.allclose(inp.embeddings.var(dim=(0, 2), unbiased=False), torch.ones(k), atol=1e-3)


def test_mixed_embeddings_carry_gradient_to_table() -> None:
    table = torch.randn(5, 8, requires_grad=True)
    inp = sample_mixed_embeddings(table, 6, 2, torch.Generator().manual_seed(0))
    weights = torch.randn(inp.embeddings.shape, generator=torch.Generator().manual_seed(1))
    (weights * inp.embeddings).sum().backward()  # a plain sum (or of squares) is constant after standardizing
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_standardize_per_slot_matches_batchnorm_on_reverse_permute() -> None:
    e = torch.randn(6, 3, 5) * 2 + 1
    bn = torch.nn.BatchNorm1d(3, affine=False, track_running_stats=False)
    ref = bn(e.permute(2, 1, 0)).permute(2, 1, 0)  # Qimera's `.T` on (B, K, D), written explicitly
    assert torch.allclose(standardize_per_slot(e), ref, atol=1e-5)


def test_generator_single_and_mixed_shapes() -> None:
    rng = torch.Generator().manual_seed(0)
    for conditional, disentangle in ((False, False), (True, False), (False, True)):
        gen = QimeraGenerator(10, 16, 16, conditional_bn=conditional, disentangle=disentangle)
        assert (gen.mapping is not None) == disentangle
        assert gen.body.l1.in_features == (100 if disentangle else 16)
        for mixed in (False, True):
            inp = gen.sample(8, mixed, 3, rng)
            out = gen(inp)
            assert out.shape == (8, 3, 16, 16)
            assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_qimera_kd_loss_is_elementwise_mean_times_t2() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
    temp, alpha = 2.0, 1.5
    total = 0.0
    for i in range(2):
        ps = [math.exp(v / temp) for v in s[i].tolist()]
        pt = [math.exp(v / temp) for v in t[i].tolist()]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total += sum(q * (math.log(q) - math.log(p)) for q, p in zip(pt, ps, strict=True))
    expected = total / (2 * 3) * alpha * temp**2  # element-wise mean: divided by B·C, not B
    assert qimera_kd_loss(s, t, temp, alpha).item() == pytest.approx(expected, rel=1e-5)


def test_soft_cross_entropy() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    soft = torch.tensor([[0.25, 0.0, 0.75]])
    logp = F.log_softmax(logits, dim=1)[0]
    expected = -(0.25 * logp[0] + 0.75 * logp[2])
    assert soft_cross_entropy(logits, soft).item() == pytest.approx(expected.item(), rel=1e-6)
    hard = torch.tensor([2])
    assert soft_cross_entropy(logits, F.one_hot(hard, 3).float()).item() == pytest.approx(
        F.cross_entropy(logits, hard).item(), rel=1e-6
    )


@pytest.mark.skipif(
    not _quantizer_ready(), reason="intraq.quantize (quantize_model, set_act_calibration) not there yet"
)
def test_run_qimera_tiny_end_to_end() -> None:
    from intraq.quantize import quantize_model

    torch.manual_seed(0)
    teacher = build_model("digits_cnn", 10).eval()
    cfg = RunConfig()
    cfg.qimera.epochs, cfg.qimera.iters_per_epoch, cfg.qimera.batch_size = 2, 3, 8
    cfg.qimera.warmup_epochs, cfg.qimera.latent_dim, cfg.qimera.mix_prob = 1, 16, 0.5
    student = quantize_model(copy.deepcopy(teacher), cfg.quant)
    student_before = [p.detach().clone() for p in student.parameters()]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.zeros(4, dtype=torch.long), norm)
    data = DataSplits(name="digits", train=ds, test=ds, num_classes=10, norm=norm, image_size=16)
    calls = []

    def evaluate(model: torch.nn.Module) -> float:
        calls.append(model.training)
        return 10.0 * len(calls)

    out = run_qimera(teacher, student, data, cfg, torch.device("cpu"), evaluate, progress=False)
    assert {"acc_after_calibration", "acc_final", "acc_best", "best_epoch", "history"} <= set(out)
    assert len(out["history"]) == 2 and len(calls) == 2
    assert out["acc_final"] == 20.0 and out["acc_best"] == 20.0 and out["best_epoch"] == 1
    assert out["acc_after_calibration"] == 20.0  # epochs < 4: the whole run calibrates
    assert out["history"][0]["loss_student"] is None and out["history"][1]["loss_student"] is not None
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters(), strict=True))
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
