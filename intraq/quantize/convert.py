"""Turn an FP teacher into the GDFQ-lineage fake-quantized student (methods §1.1, traps T14/T16).

Every Conv2d and Linear (first conv and last FC included) gets per-channel weight quantization; every
ReLU/ReLU6 is followed by a QuantAct. The input image, BN (kept separate, not folded) and the pooled FC
input stay FP.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from intraq.config import QuantConfig
from intraq.quantize.quantizers import QuantAct, QuantConv2d, QuantLinear

DEFINITION = (
    "gdfq-lineage: per-channel min/max weights on every Conv2d/Linear (first and last included); "
    "per-tensor EMA activation quantizer after every ReLU; FP input image; BN unfolded FP; "
    "FC input not re-quantized"
)


def _convert(module: nn.Module, cfg: QuantConfig, memo: dict[int, nn.Module]) -> nn.Module:
    """The replacement for one module; `memo` keeps a module registered twice shared after conversion."""
    key = id(module)
    if key in memo:
        return memo[key]
    new: nn.Module
    if isinstance(module, (QuantConv2d, QuantLinear, QuantAct)):
        new = module
    elif isinstance(module, nn.Conv2d):
        new = QuantConv2d.from_float(module, cfg.weight_bits)
    elif isinstance(module, nn.Linear):
        new = QuantLinear.from_float(module, cfg.weight_bits)
    elif isinstance(module, (nn.ReLU, nn.ReLU6)):
        new = nn.Sequential(module, QuantAct(cfg.act_bits, cfg.act_ema, cfg.ema_beta))
        new.train(module.training)
    else:
        # `_modules`, not `named_children()`: the latter skips a child registered a second time.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            replacement = _convert(child, cfg, memo)
            if replacement is not child:
                setattr(module, name, replacement)
        new = module
    memo[key] = new
    return new


def quantize_model(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """A fake-quantized deep copy of `model`; the original is untouched.

    Non-module attributes (e.g. `feature_module_name`) survive the copy, and module paths change only at
    ReLUs (`...relu` becomes `...relu.0` + `...relu.1`). Parameters keep the original's `requires_grad`, so a
    frozen teacher gives a frozen copy: call `requires_grad_(True)` before fine-tuning. QuantActs start with
    `calibrating=False` and no range: calibrate before the first forward.
    """
    student = copy.deepcopy(model)
    return _convert(student, cfg, {})


def act_quantizers(model: nn.Module) -> list[QuantAct]:
    """All activation quantizers in module order (each shared instance once)."""
    return [m for m in model.modules() if isinstance(m, QuantAct)]


def set_act_calibration(model: nn.Module, enabled: bool) -> None:
    """Switch range tracking on/off for every QuantAct (the lineage's unfreeze/freeze)."""
    for quant in act_quantizers(model):
        quant.calibrating = enabled


def describe_quantization(model: nn.Module) -> dict[str, Any]:
    """Counts and bit widths for result metadata; the fp_* counts should be 0 after `quantize_model`."""
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    acts = act_quantizers(model)
    steps = [int(a.steps) for a in acts]
    modules = list(model.modules())
    return {
        "definition": DEFINITION,
        "quantized_convs": len(convs),
        "quantized_linears": len(linears),
        "act_quantizers": len(acts),
        "fp_convs": sum(isinstance(m, nn.Conv2d) and not isinstance(m, QuantConv2d) for m in modules),
        "fp_linears": sum(isinstance(m, nn.Linear) and not isinstance(m, QuantLinear) for m in modules),
        "batchnorms": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules),
        "weight_bits": sorted({m.weight_bits for m in convs + linears}),
        "act_bits": sorted({a.bits for a in acts}),
        "act_ema": sorted({a.ema for a in acts}),
        "ema_beta": sorted({a.beta for a in acts}),
        "act_calibration_steps_min": min(steps) if steps else 0,
        "act_calibration_steps_max": max(steps) if steps else 0,
    }
