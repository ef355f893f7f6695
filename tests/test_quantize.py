"""Pins the GDFQ-lineage quantizer (methods §1): affine grid, STE, both activation EMAs, model conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intraq.config import QuantConfig
from intraq.quantize import (
    QuantAct,
    QuantConv2d,
    QuantLinear,
    act_quantizers,
    describe_quantization,
    quantize_affine,
    quantize_model,
    set_act_calibration,
)
from intraq.teacher.features import logits_and_features
from intraq.teacher.models import digits_cnn, resnet18, resnet20


def _per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = w.flatten(1)
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    return flat.min(1).values.view(shape), flat.max(1).values.view(shape)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_per_channel_levels_and_bounds(bits: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    w[0] = torch.linspace(-1.3, 0.7, 27).view(3, 3, 3)  # spread channel: every level is hit
    w_min, w_max = _per_channel(w)
    q = quantize_affine(w, bits, w_min, w_max)
    step = (w_max - w_min) / (2**bits - 1)
    for c in range(4):
        assert len(torch.unique(q[c])) <= 2**bits
    assert len(torch.unique(q[0])) == 2**bits
    assert bool((q >= w_min - step - 1e-6).all()) and bool((q <= w_max + step + 1e-6).all())


def test_hand_computed_two_bit_example() -> None:
    # b=2, range [-0.3, 0.9]: s = 3/1.2 = 2.5, zp = round(-0.75) + 2 = 1, grid (q+1)/2.5 = -0.4, 0, 0.4, 0.8.
    # The rounded zero point shifts the grid: -0.3 -> -0.4 and the max 0.9 -> 0.8.
    x = torch.tensor([-0.3, 0.1, 0.5, 0.9])
    q = quantize_affine(x, 2, torch.tensor(-0.3), torch.tensor(0.9))
    torch.testing.assert_close(q, torch.tensor([-0.4, 0.0, 0.4, 0.8]))
    # Range [0, 1]: s = 3, zp = 2, grid 0, 1/3, 2/3, 1.
    x = torch.tensor([0.0, 0.1, 0.4, 0.6, 0.9, 1.0])
    q = quantize_affine(x, 2, 0.0, 1.0)
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]))


def test_straight_through_gradient() -> None:
    torch.manual_seed(0)
    x = (torch.randn(3, 5) * 3).requires_grad_(True)
    x_min = torch.full((3, 1), -1.0, requires_grad=True)  # x exceeds the range: still no clipping mask
    x_max = torch.full((3, 1), 1.0, requires_grad=True)
    quantize_affine(x, 3, x_min, x_max).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    assert x_min.grad is None and x_max.grad is None


def _run_constant(ema: str, m: float, steps: int) -> list[float]:
    quant = QuantAct(4, ema=ema)
    quant.calibrating = True
    out = []
    for _ in range(steps):
        quant(torch.full((2, 3), m))
        out.append(float(quant.x_max))
    return out


def test_correct_ema_constant_input() -> None:
    m = 2.5
    torch.testing.assert_close(torch.tensor(_run_constant("correct", m, 5)), torch.full((5,), m))


def test_official_ema_overshoots_then_converges() -> None:
    m = 2.0
    beta = 0.9
    values = _run_constant("official", m, 300)
    # By hand: step 1: beta_t = 0.9, x = (0.9*0 + 0.1*m) / 0.1 = m;
    # step 2: beta_t = 0.81, x = (0.9*m + 0.1*m) / (1 - 0.81) = m / 0.19 ~ 5.26 m.
    second = (beta * m + (1 - beta) * m) / (1 - beta**2)
    assert values[0] == pytest.approx(m, rel=1e-5)
    assert values[1] == pytest.approx(second, rel=1e-5)
    assert second / m == pytest.approx(5.263, abs=1e-3)
    peak = max(range(300), key=lambda i: values[i]) + 1
    assert 19 <= peak <= 23 and values[peak - 1] > 1000 * m
    assert values[-1] == pytest.approx(m, rel=0.01)


def test_quant_act_state_and_errors() -> None:
    with pytest.raises(ValueError, match="correct, official"):
        QuantAct(4, ema="adam")
    quant = QuantAct(4)
    with pytest.raises(RuntimeError, match="calibration did not run"):
        quant(torch.rand(4))
    quant.calibrating = True
    quant(torch.tensor([0.0, 3.0]))
    quant.calibrating = False
    out = quant(torch.tensor([-1.0, 1.0, 10.0]))  # stored range [0, 3] is used, values clamp to it
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 3.0]))
    assert int(quant.steps) == 1
    fresh = QuantAct(4)
    fresh.load_state_dict(quant.state_dict())
    torch.testing.assert_close(fresh(torch.tensor([1.0])), torch.tensor([1.0]))


def test_quant_layers_copy_and_quantize() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1, bias=True)
    qconv = QuantConv2d.from_float(conv, 2)
    assert qconv.weight_bits == 2 and qconv.stride == (2, 2) and qconv.padding == (1, 1)
    assert qconv.weight is not conv.weight
    torch.testing.assert_close(qconv.weight, conv.weight)
    wq = qconv.quantized_weight()
    assert all(len(torch.unique(wq[c])) <= 4 for c in range(4))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(qconv(x), nn.functional.conv2d(x, wq, conv.bias, 2, 1))
    lin = nn.Linear(5, 3)
    qlin = QuantLinear.from_float(lin, 3)
    wq = qlin.quantized_weight()
    assert all(len(torch.unique(wq[r])) <= 8 for r in range(3))
    torch.testing.assert_close(qlin(x[:, 0, 0, :5]), nn.functional.linear(x[:, 0, 0, :5], wq, lin.bias))


def _count(model: nn.Module, kind: type | tuple[type, ...]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# Both models pool globally, so 8x8 inputs keep the test fast.
@pytest.mark.parametrize(("factory", "size"), [(resnet20, 8), (digits_cnn, 8)])
def test_quantize_model_structure_and_accuracy(factory, size: int) -> None:
    torch.manual_seed(0)
    model = factory(10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_relu = _count(model, (nn.ReLU, nn.ReLU6))
    n_conv, n_lin = _count(model, nn.Conv2d), _count(model, nn.Linear)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        fp_logits, fp_feat = logits_and_features(model, x)

    errors = {}
    for bits in (8, 2):
        student = quantize_model(model, QuantConfig(weight_bits=bits, act_bits=bits)).eval()
        info = describe_quantization(student)
        assert len(act_quantizers(student)) == n_relu == info["act_quantizers"]
        assert _count(student, QuantConv2d) == n_conv == info["quantized_convs"]
        assert _count(student, QuantLinear) == n_lin == info["quantized_linears"]
        assert info["fp_convs"] == 0 and info["fp_linears"] == 0
        assert _count(student, nn.BatchNorm2d) == _count(model, nn.BatchNorm2d)
        assert info["weight_bits"] == [bits] and info["act_bits"] == [bits]
        with pytest.raises(RuntimeError, match="calibration did not run"):
            student(x)
        set_act_calibration(student, True)
        with torch.no_grad():
            student(x)
        set_act_calibration(student, False)
        assert not any(a.calibrating for a in act_quantizers(student))
        with torch.no_grad():
            logits, feat = logits_and_features(student, x)  # feature_module_name still resolves in the copy
        errors[bits] = float((feat - fp_feat).norm() / fp_feat.norm())
        assert logits.shape == fp_logits.shape
    assert errors[8] < 0.05  # ~0.01 measured over seeds 0-4
    assert errors[2] > 10 * errors[8] and errors[2] > 0.3
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert _count(model, (QuantConv2d, QuantLinear, QuantAct)) == 0


def test_student_trains_through_ste() -> None:
    torch.manual_seed(0)
    student = quantize_model(digits_cnn(10), QuantConfig(weight_bits=4, act_bits=4)).eval()
    x = torch.randn(4, 3, 16, 16)
    set_act_calibration(student, True)
    student(x)
    set_act_calibration(student, False)
    student(x).logsumexp(1).sum().backward()
    conv = student.features.init_block[0]
    bn = student.features.init_block[1]
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert bn.weight.grad is not None
    assert isinstance(student.features.init_block[2][1], QuantAct)


def test_resnet18_counts_and_feature_path() -> None:
    torch.manual_seed(0)
    model = resnet18(10)
    student = quantize_model(model, QuantConfig())
    assert len(act_quantizers(student)) == _count(model, nn.ReLU) == 17
    assert _count(student, QuantConv2d) == _count(model, nn.Conv2d) == 20
    assert _count(student, QuantLinear) == 1
    assert student.feature_module_name == "avgpool"
    assert isinstance(student.get_submodule(student.feature_module_name), nn.AdaptiveAvgPool2d)


def test_relu6_and_shared_modules() -> None:
    torch.manual_seed(0)
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 2))
    model.add_module("again", relu)  # one module object registered twice stays one object
    student = quantize_model(model, QuantConfig(weight_bits=4, act_bits=3, act_ema="official", ema_beta=0.5))
    acts = act_quantizers(student)
    assert len(acts) == 2 and student[1] is student.again
    assert isinstance(student[3][0], nn.ReLU6) and acts[1].ema == "official" and acts[1].beta == 0.5
    assert acts[0].bits == 3 and not acts[0].calibrating
