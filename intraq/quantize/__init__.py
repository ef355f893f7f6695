"""GDFQ/ZeroQ-lineage fake quantization shared by GDFQ, Qimera and IntraQ (methods §1)."""

from intraq.quantize.convert import (
    DEFINITION,
    act_quantizers,
    describe_quantization,
    quantize_model,
    set_act_calibration,
)
from intraq.quantize.quantizers import EMA_MODES, QuantAct, QuantConv2d, QuantLinear, quantize_affine

__all__ = [
    "DEFINITION",
    "EMA_MODES",
    "QuantAct",
    "QuantConv2d",
    "QuantLinear",
    "act_quantizers",
    "describe_quantization",
    "quantize_affine",
    "quantize_model",
    "set_act_calibration",
]
