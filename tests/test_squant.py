"""SQuant (methods §5): rounding stages pinned on small tensors, noise-calibrated input ranges, end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intraq.baselines.squant import (
    InputQuantizer,
    SquantConv2d,
    SquantLinear,
    quantize_weight,
    squant_quantize,
    squant_round,
    weight_grid,
)
from intraq.config import QuantConfig, SquantConfig
from intraq.errors import UserInputError
from intraq.teacher.models import build_model

TOL = 1e-5


def _grid(shape: tuple[int, ...], seed: int = 0, bits: int = 4) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return weight_grid(torch.randn(shape, generator=gen), bits)[0]


def _loop_reference(x: Tensor, mode: str, t_min: float, t_max: float) -> Tensor:
    """Slow per-group transcription of §5.3 (one group at a time), the oracle for the vectorized version."""
    r = x.round()
    e = r - x
    up_ok = (e < 0) & (x < t_max)
    down_ok = (e > 0) & (x > t_min)
    prio = {True: torch.where(up_ok, e.abs(), 0.0), False: torch.where(down_ok, e.abs(), 0.0)}
    new_num = {True: torch.where(up_ok, r + 1, r), False: torch.where(down_ok, r - 1, r)}
    new_err = {True: torch.where(up_ok, e + 1, 0.0), False: torch.where(down_ok, e - 1, 0.0)}
    if mode == "squant-e":
        return r
    oc, ic = x.shape[:2]
    kk = x.reshape(oc, ic, -1).shape[2]
    stages = []
    if mode in ("squant-k", "squant") and kk > 1:
        stages.append((oc * ic, kk, True))
    if mode in ("squant-c", "squant"):
        stages.append((oc, ic * kk, False))
    r, e = r.flatten(), e.flatten()
    prio = {k: v.flatten().clone() for k, v in prio.items()}
    new_num = {k: v.flatten() for k, v in new_num.items()}
    new_err = {k: v.flatten() for k, v in new_err.items()}
    for groups, length, zero_marks in stages:
        orders = {d: [torch.sort(prio[d][g * length:(g + 1) * length], descending=True, stable=True).indices
                      for g in range(groups)] for d in (True, False)}
        sums = [float(e[g * length:(g + 1) * length].sum()) for g in range(groups)]
        if zero_marks:
            prio = {d: torch.zeros_like(p) for d, p in prio.items()}
        for g in range(groups):
            up = sums[g] < 0
            n = round(abs(sums[g]))
            order = orders[up][g] + g * length
            for i in order[:n].tolist():
                r[i], e[i] = new_num[up][i], new_err[up][i]
            if n >= abs(sums[g]):
                mark = int(order[n - 1])
                prio[not up][mark] = e[mark].abs()
            else:
                mark = int(order[n])
                prio[up][mark] = e[mark].abs()
    return r.reshape(x.shape)


@pytest.mark.parametrize("shape", [(8, 16, 3, 3), (4, 6, 5, 5), (6, 8, 1, 1), (5, 12)])
@pytest.mark.parametrize("mode", ["squant-e", "squant-k", "squant-c", "squant"])
def test_vectorized_matches_loop_reference(shape: tuple[int, ...], mode: str) -> None:
    for seed, bits in [(0, 4), (1, 3), (2, 2)]:
        x = _grid(shape, seed, bits)
        half = 2 ** (bits - 1)
        assert torch.equal(squant_round(x, mode, -half, half - 1), _loop_reference(x, mode, -half, half - 1))
    # Integer-valued weights: exact zero sums and priority ties (the S == 0 "over" path).
    gen = torch.Generator().manual_seed(3)
    x = weight_grid(torch.randint(-3, 4, shape, generator=gen).float(), 4)[0]
    assert torch.equal(squant_round(x, mode, -8, 7), _loop_reference(x, mode, -8, 7))


def test_methods_table_numbers() -> None:
    """§5.3's table: seed 0, one fresh 8x16x3x3 draw per row (RTN, K, C, full), 4-bit."""
    torch.manual_seed(0)
    draws = [torch.randn(8, 16, 3, 3) for _ in range(4)]
    expected = {  # kernel-sum, channel-sum, element error, flips
        "squant-e": (2.19, 4.29, 0.50, 0),
        "squant-k": (0.50, 2.13, 0.73, 91),
        "squant-c": (2.60, 0.36, 0.53, 20),
        "squant": (0.94, 0.49, 0.73, 71),
    }
    for w, (mode, (ks, cs, el, flips)) in zip(draws, expected.items(), strict=True):
        _, stats = quantize_weight(w, 4, mode)
        assert stats["max_kernel_sum_error"] == pytest.approx(ks, abs=0.005)
        assert stats["max_channel_sum_error"] == pytest.approx(cs, abs=0.005)
        assert stats["max_element_error"] == pytest.approx(el, abs=0.005)
        assert stats["flips"] == flips


def test_e_mode_is_round_to_nearest() -> None:
    x = _grid((8, 16, 3, 3))
    assert torch.equal(squant_round(x, "squant-e", -8, 7), torch.round(x))


@pytest.mark.parametrize("seed", range(5))
def test_kernel_and_channel_sums_bounded(seed: int) -> None:
    x = _grid((8, 16, 3, 3), seed)
    k_only = squant_round(x, "squant-k", -8, 7)
    assert (k_only - x).sum((2, 3)).abs().max() <= 0.5 + TOL
    full = squant_round(x, "squant", -8, 7)
    assert (full - x).reshape(8, -1).sum(1).abs().max() <= 0.5 + TOL
    c_only = squant_round(x, "squant-c", -8, 7)
    assert (c_only - x).reshape(8, -1).sum(1).abs().max() <= 0.5 + TOL
    for q in (k_only, full, c_only):
        assert (q - x.round()).abs().max() <= 1
        assert (q - x).abs().max() < 1


@pytest.mark.parametrize("shape", [(6, 8, 1, 1), (6, 8)])
def test_k_stage_skipped_for_1x1_and_linear(shape: tuple[int, ...]) -> None:
    x = _grid(shape)
    assert torch.equal(squant_round(x, "squant-k", -8, 7), x.round())
    assert torch.equal(squant_round(x, "squant", -8, 7), squant_round(x, "squant-c", -8, 7))


def test_hand_example_single_kernel() -> None:
    # e = r - x = [-0.3, -0.4, -0.45, +0.2], S = -0.95 -> n = 1 up-flip of the largest |e| among e < 0:
    # 2.45 -> 3.
    x = torch.tensor([0.3, 1.4, 2.45, -0.2]).reshape(1, 1, 2, 2)
    expected = torch.tensor([0.0, 1.0, 3.0, 0.0]).reshape(1, 1, 2, 2)
    assert torch.equal(squant_round(x, "squant-k", -8, 7), expected)
    # The channel (= this kernel) is left at S = +0.05: n = 0, nothing more.
    assert torch.equal(squant_round(x, "squant", -8, 7), expected)


def test_hand_example_channel_uses_only_kernel_marks() -> None:
    # Kernel B: S = -1.4 -> flip 0.45 up, under -> mark 0.4 (next up candidate), residual -0.4.
    # Kernel C: S = -1.38 -> flip 0.45 up, under -> mark 0.38, residual -0.38.
    # Kernel A: S = -0.97 -> flip 2.45 up, over -> mark it for down, residual +0.03.
    # Channel S = -0.75 -> one up flip among the marks: B's 0.4 (priority 0.4 > 0.38).
    a = [0.3, 1.42, 2.45, -0.2]
    b = [0.45, 0.4, 0.35, 0.2]
    c = [0.45, 0.38, 0.35, 0.2]
    x = torch.tensor([a, b, c]).reshape(1, 3, 2, 2)
    expected = torch.tensor([[0.0, 1, 3, 0], [1, 1, 0, 0], [1, 0, 0, 0]]).reshape(1, 3, 2, 2)
    assert torch.equal(squant_round(x, "squant", -8, 7), expected)
    # C-only: every element is a candidate; S = -3.75 -> 4 up flips of the largest |e|:
    # 2.45, 0.45, 0.45, 1.42.
    c_only = torch.tensor([[0.0, 2, 3, 0], [1, 0, 0, 0], [1, 0, 0, 0]]).reshape(1, 3, 2, 2)
    assert torch.equal(squant_round(x, "squant-c", -8, 7), c_only)


def test_hand_example_channel_flips_back_a_kernel_flip() -> None:
    # D: S = -0.65 -> 0.3 flipped up (error +0.7), over -> marked down with 0.7; residual +0.35.
    # E: S = -0.65 -> 0.35 flipped up (error +0.65), marked down with 0.65; residual +0.35.
    # Channel S = +0.7 -> one down flip of the highest mark: D's element goes back to 0.
    x = torch.tensor([[0.3, 0.2, 0.1, 0.05], [0.35, 0.15, 0.1, 0.05]]).reshape(1, 2, 2, 2)
    k_only = torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0]]).reshape(1, 2, 2, 2)
    assert torch.equal(squant_round(x, "squant-k", -8, 7), k_only)
    full = torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0]]).reshape(1, 2, 2, 2)
    assert torch.equal(squant_round(x, "squant", -8, 7), full)


def test_boundary_elements_are_not_candidates() -> None:
    # S = -1.2 asks for one up flip, but x >= t_max = 7 is no candidate: the "flip" leaves the integers alone.
    x = torch.tensor([7.2, 7.3, 7.4, 7.3]).reshape(1, 1, 2, 2)
    assert torch.equal(squant_round(x, "squant", -8, 7), x.round())
    x = torch.tensor([-8.2, -8.3, -8.4, -8.3]).reshape(1, 1, 2, 2)  # mirror image at t_min = -8
    assert torch.equal(squant_round(x, "squant", -8, 7), x.round())


def test_unknown_mode_rejected() -> None:
    with pytest.raises(UserInputError):
        squant_round(torch.zeros(1, 1), "adaround", -8, 7)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_levels_per_channel(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 16, 3, 3, generator=gen)
    deq, stats = quantize_weight(w, bits, "squant")
    for row in deq.reshape(8, -1):
        assert row.unique().numel() <= 2**bits
    x, scale, zp = weight_grid(w, bits)
    q = (deq * scale - zp).round()
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    assert stats["max_deviation_from_rtn"] <= 1
    assert (deq - w).abs().max() <= (1 / scale).max() * 1.5


def _quantizer_input(qmodel: nn.Module, name: str, noise: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = qmodel.get_submodule(name).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        qmodel(noise)
    handle.remove()
    return seen[0]


def test_activation_range_from_noise_formula() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 1),  # input unsigned (post-ReLU)
        nn.Conv2d(16, 16, 1),  # input signed (no ReLU in between)
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),  # last layer: 8-bit input, no max clip
    )
    cfg = SquantConfig(noise_batch=4, act_sigma=12.0)
    qmodel, stats = squant_quantize(model, QuantConfig(weight_bits=4, act_bits=4), cfg, image_size=6)
    noise = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))

    assert not qmodel[0].act.enabled
    x2 = _quantizer_input(qmodel, "2", noise)
    assert x2.min() >= 0
    expected = min(12 * x2[x2 > 0].std(), x2.max())
    assert float(qmodel[2].act.alpha) == pytest.approx(float(expected), rel=1e-6)
    assert not bool(qmodel[2].act.signed)

    x3 = _quantizer_input(qmodel, "3", noise)
    assert x3.min() < 0
    expected = min(12 * x3.std() / 1.25, x3.max())
    assert float(qmodel[3].act.alpha) == pytest.approx(float(expected), rel=1e-6)
    assert bool(qmodel[3].act.signed)

    x7 = _quantizer_input(qmodel, "7", noise)
    assert qmodel[7].act.bits == 8
    assert float(qmodel[7].act.alpha) == pytest.approx(float(12 * x7[x7 > 0].std()), rel=1e-6)
    assert stats["layers"]["7"]["input_alpha"] == pytest.approx(float(qmodel[7].act.alpha))


def test_input_quantizer_grids() -> None:
    q = InputQuantizer(bits=4, sigma=12.0, enabled=True)
    q.calibrate(torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0]))
    alpha = float(q.alpha)
    out = q(torch.linspace(-1, 5, 101))
    levels = out.unique()
    assert levels.numel() <= 16 and levels.min() == 0
    assert levels.max() == pytest.approx(alpha)
    steps = out * 15 / alpha
    assert torch.allclose(steps, steps.round(), atol=1e-4)

    s = InputQuantizer(bits=4, sigma=12.0, enabled=True)
    s.calibrate(torch.tensor([-1.0, 0.5, 1.0]))
    assert bool(s.signed)
    assert s(torch.linspace(-3, 3, 101)).unique().numel() <= 16


def test_end_to_end_digits_cnn() -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10).eval()
    qmodel, stats = squant_quantize(model, QuantConfig(4, 4), SquantConfig(noise_batch=8), image_size=16)
    x = torch.rand(3, 3, 16, 16)
    out = qmodel(x)
    assert out.shape == (3, 10)
    assert not any(isinstance(m, nn.Conv2d | nn.Linear) for m in qmodel.modules())
    assert not any(p.requires_grad for p in qmodel.parameters())

    wrapped = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, SquantConv2d | SquantLinear)]
    first_name, first = wrapped[0]
    last_name, last = wrapped[-1]
    assert isinstance(first, SquantConv2d) and not first.act.enabled
    conv = model.get_submodule(first_name)
    assert torch.allclose(first(x), F.conv2d(x, first.weight, None, conv.stride, conv.padding))
    assert isinstance(last, SquantLinear) and last.act.bits == 8
    assert all(m.act.bits == 4 and m.act.enabled for _, m in wrapped[1:-1])

    last_in = _quantizer_input(qmodel, last_name, x)
    q_last = last.act(last_in)
    assert q_last.unique().numel() <= 256
    assert torch.allclose(q_last * 255 / last.act.alpha, (q_last * 255 / last.act.alpha).round(), atol=1e-3)
    for _, m in wrapped:
        for row in m.weight.reshape(m.weight.shape[0], -1):
            assert row.unique().numel() <= 16
    assert set(stats["layers"]) == {n for n, _ in wrapped}
    assert stats["layers"][first_name]["input_alpha"] is None
    assert stats["total_seconds"] >= stats["weight_seconds"] > 0
    assert torch.equal(model.features.init_block[0].weight, conv.weight)  # the original is untouched


def test_lineage_protocol_quantizes_every_relu_output_and_no_layer_input() -> None:
    """SQuant in the lineage's protocol: the same weights, activations at the lineage's places (methods §1.1)."""
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10).eval()
    own, _ = squant_quantize(model, QuantConfig(4, 4), SquantConfig(noise_batch=8), image_size=16)
    lineage, stats = squant_quantize(
        model, QuantConfig(4, 4), SquantConfig(noise_batch=8, protocol="lineage"), image_size=16
    )
    wrapped = [m for m in lineage.modules() if isinstance(m, SquantConv2d | SquantLinear)]
    assert not any(m.act.enabled for m in wrapped)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    pairs = [m for m in lineage.modules() if isinstance(m, nn.Sequential) and len(m) == 2
             and isinstance(m[0], nn.ReLU) and isinstance(m[1], InputQuantizer)]
    assert len(pairs) == len(relus) == len(stats["relu_output_alphas"]) > 0
    assert all(q.enabled and q.bits == 4 and bool(q.calibrated) and not bool(q.signed) for _, q in pairs)
    own_weights = [m.weight for m in own.modules() if isinstance(m, SquantConv2d | SquantLinear)]
    assert all(torch.equal(a.weight, b) for a, b in zip(wrapped, own_weights, strict=True))
    # Every ReLU output lies on its 4-bit grid [0, alpha] (16 levels); the FC input is their pooled mean.
    seen: list[torch.Tensor] = []
    hooks = [q.register_forward_hook(lambda _m, _i, out: seen.append(out)) for _, q in pairs]
    x = torch.rand(2, 3, 16, 16)
    lineage(x)
    for hook in hooks:
        hook.remove()
    for (_, q), out in zip(pairs, seen, strict=True):
        levels = out * 15 / q.alpha
        assert torch.allclose(levels, levels.round(), atol=1e-3) and out.unique().numel() <= 16
    assert stats["protocol"] == "lineage" and stats["last_layer_input_bits"] is None


def test_unknown_protocol_rejected() -> None:
    model = build_model("digits_cnn", 10).eval()
    with pytest.raises(UserInputError, match="squant.protocol"):
        squant_quantize(model, QuantConfig(4, 4), SquantConfig(protocol="nosuch"), image_size=16)
