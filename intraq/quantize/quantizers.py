"""GDFQ/ZeroQ-lineage fake quantizers (methods §1.2-1.3): per-channel min/max weights, EMA activation ranges.

The arithmetic follows the lineage exactly (asymmetric affine grid on a "signed" integer range, rounded zero
point, pure straight-through gradient), because the reported numbers depend on it. The activation-range EMA
comes in two forms: the lineage's broken "bias correction" (trap T11) and a correct one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

EMA_MODES = ("correct", "official")


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise ValueError(f"bit width must be a positive int, got {bits!r}")
    return bits


class _AffineSTE(torch.autograd.Function):
    """Forward: the lineage's affine fake quantization. Backward: identity to x, nothing to the ranges.

    Written in the `setup_context` form with a generated vmap rule, so `torch.func.vmap` can step several
    quantized students at once (the stacked fast path, intraq.fast); the arithmetic is unchanged."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, bits: int, x_min: Tensor, x_max: Tensor) -> Tensor:  # type: ignore[override]
        half = 2 ** (bits - 1)
        scale = (2**bits - 1) / torch.clamp(x_max - x_min, min=1e-8)
        zero_point = torch.round(scale * x_min) + half
        q = torch.clamp(torch.round(scale * x - zero_point), -half, half - 1)
        return (q + zero_point) / scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        pass  # the straight-through backward needs nothing saved

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return grad_output, None, None, None


def quantize_affine(x: Tensor, bits: int, x_min: Tensor | float, x_max: Tensor | float) -> Tensor:
    """Dequantized `x` on 2^bits levels spanning [x_min, x_max] (zero point rounded, so the grid may shift by
    up to half a step). Ranges broadcast against `x` (per-channel (C,1,1,1)/(C,1) or scalar). Gradient is
    straight-through to `x` (no clipping mask) and never reaches the ranges, as in the lineage."""
    _check_bits(bits)
    x_min = torch.as_tensor(x_min, dtype=x.dtype, device=x.device).detach()
    x_max = torch.as_tensor(x_max, dtype=x.dtype, device=x.device).detach()
    return _AffineSTE.apply(x, bits, x_min, x_max)


def _per_channel_range(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Min/max per output channel, shaped to broadcast against `weight`; no clipping (methods §1.2)."""
    flat = weight.detach().flatten(1)
    shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)


class _PerChannelWeightQuant:
    """Shared by QuantConv2d and QuantLinear: the weight is re-quantized per output channel (row) from its current
    FP value on every forward, so fine-tuning updates the FP shadow weight through the STE. Bias stays FP."""

    weight: nn.Parameter
    weight_bits: int

    def _finish_copy(self, layer: nn.Module, bits: int) -> None:
        _copy_params(layer, self)  # type: ignore[arg-type]
        self.weight_bits = _check_bits(bits)
        self.train(layer.training)  # type: ignore[attr-defined]

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight used by `forward` (differentiable via the STE)."""
        w_min, w_max = _per_channel_range(self.weight)
        return quantize_affine(self.weight, self.weight_bits, w_min, w_max)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"  # type: ignore[misc]


class QuantConv2d(_PerChannelWeightQuant, nn.Conv2d):
    """Conv2d with per-output-channel min/max weight quantization recomputed every forward (methods §1.2)."""

    @classmethod
    def from_float(cls, layer: nn.Conv2d, bits: int) -> QuantConv2d:
        """A copy of `layer` (hyper-parameters, weight, bias, requires_grad) with `bits`-bit weights."""
        new = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            dilation=layer.dilation,  # type: ignore[arg-type]
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        new._finish_copy(layer, bits)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_PerChannelWeightQuant, nn.Linear):
    """Linear with per-row min/max weight quantization recomputed every forward (methods §1.2)."""

    @classmethod
    def from_float(cls, layer: nn.Linear, bits: int) -> QuantLinear:
        """A copy of `layer` (weight, bias, requires_grad) with `bits`-bit weights."""
        new = cls(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        new._finish_copy(layer, bits)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    """Copy weight/bias values and their requires_grad flags, so the source stays untouched."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            src_p = getattr(src, name)
            if src_p is None:
                continue
            dst_p = getattr(dst, name)
            dst_p.copy_(src_p)
            dst_p.requires_grad_(src_p.requires_grad)


class QuantAct(nn.Module):
    """Per-tensor activation fake quantizer placed after each ReLU (methods §1.3).

    While `calibrating` (the lineage's `running_stat`), every forward folds the batch's global min/max into an
    EMA range; otherwise the stored range is used. `ema="official"` reproduces the lineage's formula, which
    feeds the already bias-divided value back into the EMA and overshoots ~4000x near step 21 (trap T11);
    `ema="correct"` keeps the raw EMA and divides only when reading it, so a constant input gives its value.
    """

    def __init__(self, bits: int, ema: str = "correct", beta: float = 0.9) -> None:
        super().__init__()
        if ema not in EMA_MODES:
            raise ValueError(f"unknown activation EMA {ema!r}; choose one of {', '.join(EMA_MODES)}")
        if not 0.0 < beta < 1.0:
            raise ValueError(f"EMA beta must be in (0, 1), got {beta!r}")
        self.bits = _check_bits(bits)
        self.ema = ema
        self.beta = float(beta)
        self.calibrating = False
        self.register_buffer("x_min", torch.zeros(()))
        self.register_buffer("x_max", torch.zeros(()))
        # Raw (un-corrected) EMAs, used only by ema="correct".
        self.register_buffer("x_min_raw", torch.zeros(()))
        self.register_buffer("x_max_raw", torch.zeros(()))
        self.register_buffer("beta_t", torch.ones(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._range_checked = False  # avoids a device sync per forward once the range is known to be set

    @torch.no_grad()
    def _update_range(self, x: Tensor) -> None:
        batch_min = x.detach().min().to(self.x_min.dtype)
        batch_max = x.detach().max().to(self.x_max.dtype)
        beta = self.beta
        self.beta_t.mul_(beta)
        self.steps.add_(1)
        correction = 1.0 - self.beta_t
        if self.ema == "official":
            self.x_min.copy_((beta * self.x_min + (1 - beta) * batch_min) / correction)
            self.x_max.copy_((beta * self.x_max + (1 - beta) * batch_max) / correction)
        else:
            self.x_min_raw.copy_(beta * self.x_min_raw + (1 - beta) * batch_min)
            self.x_max_raw.copy_(beta * self.x_max_raw + (1 - beta) * batch_max)
            self.x_min.copy_(self.x_min_raw / correction)
            self.x_max.copy_(self.x_max_raw / correction)
        self._range_checked = True

    def check_calibrated(self) -> None:
        """Raise if no range was ever set; checked once (a host sync), then remembered until new buffers load."""
        if self._range_checked:
            return
        if int(self.steps) == 0 and float(self.x_min) == 0.0 and float(self.x_max) == 0.0:
            raise RuntimeError(
                "QuantAct has no activation range: calibration did not run. Call "
                "set_act_calibration(model, True), run some batches, then set_act_calibration(model, False)."
            )
        self._range_checked = True

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._range_checked = False  # new buffers: re-check them once

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self._update_range(x)
        else:
            self.check_calibrated()
        return quantize_affine(x, self.bits, self.x_min.to(x.dtype), self.x_max.to(x.dtype))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, ema={self.ema!r}, beta={self.beta}, calibrating={self.calibrating}"
