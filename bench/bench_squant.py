"""Wall time of SQuant weight quantization on torchvision-architecture ResNet-18 (methods §5.5).

The paper's Table 3 gives 84 ms on an A100 with the CUDA kernel; this times the vectorized torch version on
whatever runs the suite. Random init: the rounding cost does not depend on the weights' values.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from intraq.baselines.squant import quantize_weights
from intraq.config import QuantConfig, SquantConfig
from intraq.teacher.models import build_model


def test_squant_resnet18_walltime(benchmark: Any) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 1000).eval()
    quant, cfg = QuantConfig(weight_bits=4, act_bits=4), SquantConfig(mode="squant")
    _, layers = benchmark.pedantic(quantize_weights, args=(model, quant, cfg), rounds=1, iterations=1)

    benchmark.extra_info["layers"] = len(layers)
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    # Timings taken on a busy machine are not comparable; keep the load next to them.
    benchmark.extra_info["load_average_1min"] = os.getloadavg()[0]
    benchmark.extra_info["rounding_seconds_sum"] = sum(info["seconds"] for info in layers.values())
    benchmark.extra_info["per_layer"] = layers
    assert len(layers) == 21  # 20 convs + fc: the paper's "21 layers"
    assert all(info["max_channel_sum_error"] <= 0.5 + 1e-4 for info in layers.values())
    assert all(info["max_deviation_from_rtn"] <= 1 for info in layers.values())
