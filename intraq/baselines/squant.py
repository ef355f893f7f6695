"""SQuant (Guo et al., ICLR 2022): data-free post-training quantization, no fine-tuning (methods §5).

Reproduced from the official code's behaviour (methods §5.1-5.4), vectorized in torch so that ResNet-18 takes
seconds on a CPU instead of the official Python fallback's loops over (oc, ic):

* Weights: per-output-channel asymmetric min/max quantizer of the GDFQ lineage (§1.2); the continuous grid
  value x = s*w - zp is rounded by SQuant's E (round to nearest), K (per kernel) and C (per output channel)
  stages.
* The bookkeeping of the official rounding routine is kept on purpose, including its quirks: a "flip" of a
  non-candidate (when n exceeds the candidates) leaves the integer unchanged but records error 0; with S == 0
  the "over" rule marks the last element of the sort order (Python negative indexing). Priority ties are
  broken by element index (stable sort); the official sort is unstable, which only matters for exact ties.
* Activations: one per-tensor quantizer at the INPUT of every Conv2d/Linear, calibrated once on the first
  forward of un-normalized uniform noise `torch.rand(noise_batch, 3, H, W)` (trap T18):
  alpha = sigma*std(positive entries), or sigma*std(all)/1.25 when the tensor has negatives, clipped to the
  tensor max below 6 bits. Ranges are set layer by layer during that one forward, so each layer sees the
  already-quantized upstream model, as in the official code.
* "W4A4" here is SQuant's definition, not IntraQ's (trap T16): the first layer's input (the image) stays FP,
  the last layer's input is quantized at `last_layer_input_bits` (8), and every weight (first and last
  included) is at `weight_bits`. First/last are taken in module registration order, like the official
  `set_first_last_layer`.
* `protocol=lineage` keeps SQuant's weights and its data-free range rule but quantizes activations where the
  IntraQ lineage does (methods §1.1): after every ReLU at `act_bits`, no quantizer at Conv2d/Linear inputs, so
  the image and the pooled FC input are not re-quantized. This is the like-for-like row of the comparison.
* The returned model is inference-only: quantized weights are buffers, the fake quantizers have no gradient.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intraq.config import QuantConfig, SquantConfig
from intraq.errors import UserInputError

MODES = ("squant-e", "squant-k", "squant-c", "squant")
PROTOCOLS = ("squant", "lineage")


# --------------------------------------------------------------------------------------------------- rounding
def _select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Exact `torch.where(mask, a, b)` for finite floats, as a*m + b*(1-m): several times faster on CPU."""
    m = mask.to(a.dtype)
    return a * m + b * (1 - m)


def _flip_stage(
    number: Tensor,
    error: Tensor,
    up: tuple[Tensor, Tensor, Tensor],
    down: tuple[Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One SQuant stage on (G, L) groups: flip top-n candidates per group, mark candidates for the next one.

    `up`/`down` are (flipped number, flipped error, priority), all (G, L). Returns the new number and error
    and the new up/down priorities, which hold only the one mark per group that the official routine leaves.
    """
    up_number, up_error, up_prio = up
    down_number, down_error, down_prio = down
    length = number.shape[1]
    err_sum = error.sum(-1)
    go_up = err_sum < 0
    abs_sum = err_sum.abs()
    n = abs_sum.round()
    over = n >= abs_sum
    n = n.long()

    go_up_col = go_up[:, None]
    prio = _select(go_up_col, up_prio, down_prio)
    order = torch.sort(prio, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(length, device=order.device).expand_as(order))
    chosen = rank < n[:, None]
    number = _select(chosen, _select(go_up_col, up_number, down_number), number)
    error = _select(chosen, _select(go_up_col, up_error, down_error), error)

    # over: the last flipped element may flip back (opposite direction);
    # under: the next unflipped candidate may flip (same direction).
    pos = torch.where(over, (n - 1) % length, n.clamp(max=length - 1))
    idx = order.gather(1, pos[:, None])
    value = error.gather(1, idx).abs()
    mark_up = (go_up ^ over)[:, None]
    new_up = torch.zeros_like(up_prio).scatter_(1, idx, value * mark_up)
    new_down = torch.zeros_like(down_prio).scatter_(1, idx, value * ~mark_up)
    return number, error, new_up, new_down


def squant_round(x: Tensor, mode: str, t_min: float, t_max: float) -> Tensor:
    """SQuant rounding of continuous grid values x, shape (OC, IC, k, k) or (OC, IC); not clamped.

    E = round to nearest; K = per (oc, ic) kernel (skipped when k*k == 1); C = per output channel.
    """
    if mode not in MODES:
        raise UserInputError(f"unknown SQuant mode {mode!r}; choose one of {', '.join(MODES)}")
    rounded = x.round()
    if mode == "squant-e":
        return rounded
    oc, ic = x.shape[0], x.shape[1]
    kernel = x.reshape(oc, ic, -1).shape[2]
    do_k = mode in ("squant-k", "squant") and kernel > 1
    do_c = mode in ("squant-c", "squant")

    error = rounded - x
    is_up = (error < 0) & (x < t_max)
    is_down = (error > 0) & (x > t_min)
    # Masked products instead of torch.where (exact for these finite values, and much faster on CPU).
    up_number = rounded + is_up
    up_error = (error + 1) * is_up
    up_prio = -error * is_up
    down_number = rounded - is_down.to(x.dtype)
    down_error = (error - 1) * is_down
    down_prio = error * is_down

    number = rounded
    if do_k:
        shape = (oc * ic, kernel)
        number, error, up_prio, down_prio = _flip_stage(
            number.reshape(shape),
            error.reshape(shape),
            (up_number.reshape(shape), up_error.reshape(shape), up_prio.reshape(shape)),
            (down_number.reshape(shape), down_error.reshape(shape), down_prio.reshape(shape)),
        )
    if do_c:
        shape = (oc, ic * kernel)
        number, _, _, _ = _flip_stage(
            number.reshape(shape),
            error.reshape(shape),
            (up_number.reshape(shape), up_error.reshape(shape), up_prio.reshape(shape)),
            (down_number.reshape(shape), down_error.reshape(shape), down_prio.reshape(shape)),
        )
    return number.reshape(x.shape)


# --------------------------------------------------------------------------------------------------- weights
def weight_grid(w: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-output-channel asymmetric affine grid of the GDFQ lineage: (x unrounded, scale, zero point)."""
    flat = w.reshape(w.shape[0], -1)
    w_min = flat.min(1).values
    w_max = flat.max(1).values
    scale = (2**bits - 1) / torch.clamp(w_max - w_min, min=1e-8)
    zero_point = (scale * w_min).round() + 2 ** (bits - 1)
    view = (-1,) + (1,) * (w.dim() - 1)
    scale, zero_point = scale.view(view), zero_point.view(view)
    return scale * w - zero_point, scale, zero_point


def _unique_per_row(q: Tensor) -> Tensor:
    """Number of distinct values in each row, vectorized (sort, count changes)."""
    s = q.reshape(q.shape[0], -1).sort(dim=1).values
    return 1 + (s[:, 1:] != s[:, :-1]).sum(1)


def quantize_weight(w: Tensor, bits: int, mode: str) -> tuple[Tensor, dict[str, float]]:
    """SQuant-quantize one weight tensor; returns the dequantized weight and its rounding statistics."""
    start = time.perf_counter()
    half = 2 ** (bits - 1)
    x, scale, zero_point = weight_grid(w.detach(), bits)
    q = squant_round(x, mode, -half, half - 1).clamp(-half, half - 1)
    if int(_unique_per_row(q).max()) > 2**bits:
        raise AssertionError(f"SQuant produced more than 2^{bits} levels in a channel")
    deq = (q + zero_point) / scale
    elapsed = time.perf_counter() - start

    oc, ic = w.shape[0], w.shape[1]
    err = q - x
    rtn = x.round().clamp(-half, half - 1)
    stats = {
        "max_kernel_sum_error": float(err.reshape(oc, ic, -1).sum(-1).abs().max()),
        "max_channel_sum_error": float(err.reshape(oc, -1).sum(-1).abs().max()),
        "max_element_error": float(err.abs().max()),
        "max_deviation_from_rtn": float((q - rtn).abs().max()),
        "flips": int((q != rtn).sum()),
        "elements": w.numel(),
        "seconds": elapsed,
    }
    return deq, stats


# ------------------------------------------------------------------------------------------------ activations
class InputQuantizer(nn.Module):
    """Per-tensor fake quantizer of a layer input; the first tensor it sees (the noise) sets its range."""

    def __init__(self, bits: int, sigma: float, enabled: bool) -> None:
        super().__init__()
        self.bits = bits
        self.sigma = sigma
        self.enabled = enabled
        self.register_buffer("alpha", torch.tensor(0.0))
        self.register_buffer("signed", torch.tensor(False))
        self.register_buffer("calibrated", torch.tensor(False))

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """alpha = sigma*std(x>0), or sigma*std(x)/1.25 when signed; clipped to max(x) below 6 bits (§5.4)."""
        signed = bool(x.min() < 0)
        if signed:
            alpha = self.sigma * x.std() / 1.25
        else:
            positive = x[x > 0]
            # All-zero input: the official code would get NaN; a zero range quantizes everything to 0 instead.
            alpha = self.sigma * positive.std() if positive.numel() > 1 else x.new_tensor(0.0)
        if self.bits < 6:
            alpha = torch.minimum(alpha, x.max())
        self.alpha.copy_(alpha)
        self.signed.fill_(signed)
        self.calibrated.fill_(True)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if not bool(self.calibrated):
            self.calibrate(x)
        alpha = self.alpha
        x_min = -alpha if bool(self.signed) else torch.zeros_like(alpha)
        scale = (2**self.bits - 1) / torch.clamp(alpha - x_min, min=1e-8)
        if bool(self.signed):
            zero_point = (scale * x_min).round() + 2 ** (self.bits - 1)
            low, high = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        else:
            zero_point = (scale * x_min).round()
            low, high = 0, 2**self.bits - 1
        q = (scale * x - zero_point).round().clamp(low, high)
        return (q + zero_point) / scale

    def extra_repr(self) -> str:
        return f"bits={self.bits}, enabled={self.enabled}"


class SquantConv2d(nn.Module):
    """Conv2d with an input quantizer and a fixed SQuant-quantized weight (a buffer: inference only)."""

    def __init__(self, conv: nn.Conv2d, weight: Tensor, act: InputQuantizer) -> None:
        super().__init__()
        self.act = act
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise UserInputError("SQuant wrapper supports zero-padded convolutions only")

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SquantLinear(nn.Module):
    """Linear with an input quantizer and a fixed SQuant-quantized weight (a buffer: inference only)."""

    def __init__(self, linear: nn.Linear, weight: Tensor, act: InputQuantizer) -> None:
        super().__init__()
        self.act = act
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act(x), self.weight, self.bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _quantize_relu_outputs(module: nn.Module, bits: int, sigma: float, memo: dict[int, nn.Module]) -> None:
    """Follow every ReLU/ReLU6 by an InputQuantizer (the lineage's places); a shared ReLU stays shared."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if isinstance(child, (nn.ReLU, nn.ReLU6)):
            if id(child) not in memo:
                memo[id(child)] = nn.Sequential(child, InputQuantizer(bits, sigma, enabled=True))
            setattr(module, name, memo[id(child)])
        else:
            _quantize_relu_outputs(child, bits, sigma, memo)


def quantize_weights(
    model: nn.Module, quant: QuantConfig, cfg: SquantConfig
) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """Deep-copy `model` and replace every Conv2d/Linear by its SQuant wrapper; activation ranges stay unset.

    Separate from `squant_quantize` so the weight-only cost (the paper's runtime claim, §5.5) can be timed.
    """
    if cfg.mode not in MODES:
        raise UserInputError(f"unknown SQuant mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
    if cfg.protocol not in PROTOCOLS:
        raise UserInputError(f"unknown squant.protocol {cfg.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    lineage = cfg.protocol == "lineage"
    qmodel = copy.deepcopy(model)
    names = [n for n, m in qmodel.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if not names:
        raise UserInputError("SQuant found no Conv2d/Linear layer to quantize")
    layers: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        layer = qmodel.get_submodule(name)
        weight, stats = quantize_weight(layer.weight, quant.weight_bits, cfg.mode)
        bits = cfg.last_layer_input_bits if i == len(names) - 1 else quant.act_bits
        act = InputQuantizer(bits, cfg.act_sigma, enabled=i > 0 and not lineage)
        if isinstance(layer, nn.Conv2d):
            wrapped: nn.Module = SquantConv2d(layer, weight, act)
        else:
            wrapped = SquantLinear(layer, weight, act)
        _set_submodule(qmodel, name, wrapped)
        layers[name] = {**stats, "input_bits": bits if act.enabled else None}
    if lineage:
        _quantize_relu_outputs(qmodel, quant.act_bits, cfg.act_sigma, {})
    for p in qmodel.parameters():
        p.requires_grad_(False)
    return qmodel, layers


def squant_quantize(
    model: nn.Module, quant: QuantConfig, cfg: SquantConfig, image_size: int, generator_seed: int = 0,
    channels: int = 3,
) -> tuple[nn.Module, dict[str, Any]]:
    """SQuant PTQ of a copy of `model`: round all weights, then one noise forward sets the input ranges.

    Returns the inference-only quantized model (eval mode) and a stats dict (per-layer rounding errors, flips,
    activation ranges, weight and total wall time).
    """
    start = time.perf_counter()
    qmodel, layers = quantize_weights(model, quant, cfg)
    weight_seconds = time.perf_counter() - start
    qmodel.eval()
    device = next((t.device for t in qmodel.state_dict().values()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(generator_seed)
    noise = torch.rand(cfg.noise_batch, channels, image_size, image_size, generator=generator).to(device)
    with torch.no_grad():
        qmodel(noise)
    for name, info in layers.items():
        act = qmodel.get_submodule(name).act
        info["input_alpha"] = float(act.alpha) if act.enabled else None
        info["input_signed"] = bool(act.signed) if act.enabled else None
    relu_quantizers = [m[1] for m in qmodel.modules() if isinstance(m, nn.Sequential) and len(m) == 2
                       and isinstance(m[1], InputQuantizer)]
    stats = {
        "mode": cfg.mode,
        "protocol": cfg.protocol,
        "relu_output_alphas": [float(q.alpha) for q in relu_quantizers],
        "weight_bits": quant.weight_bits,
        "act_bits": quant.act_bits,
        "last_layer_input_bits": None if cfg.protocol == "lineage" else cfg.last_layer_input_bits,
        "act_sigma": cfg.act_sigma,
        "layers": layers,
        "flips": sum(info["flips"] for info in layers.values()),
        "weight_seconds": weight_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    return qmodel, stats
