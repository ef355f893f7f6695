"""BatchNorm-statistics loss (methods §2.1.3): the synthetic batch should match each BN layer's running stats."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BNStatsLoss:
    """Forward hooks on every BatchNorm2d that record the batch mean and biased variance of the BN *input*.

    `loss()` = mean over layers of [MSE(mean, running_mean) + MSE(var, running_var)], as IntraQ, GDFQ and
    Qimera compute it (MSE averages over channels; no first-layer multiplier). Use as a context manager.
    `fast=False` is the plain reference computation (torch.var) that the fast path is tested against.
    """

    def __init__(self, model: nn.Module, fast: bool = True) -> None:
        self.fast = fast
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm2d layer: the BNS loss needs one")
        self.terms: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        if self.fast:
            # E[x^2] - E[x]^2: one fused pass instead of torch.var's two (var was ~25% of generation time on
            # CPU); agrees with torch.var to float32 rounding for BN inputs, whose mean is not >> their std.
            var = ((x * x).mean(dim=(0, 2, 3)) - mean * mean).clamp_min(0.0)
        else:
            var = x.var(dim=(0, 2, 3), unbiased=False)
        self.terms.append(
            F.mse_loss(mean, module.running_mean) + F.mse_loss(var, module.running_var)
        )

    def loss(self) -> torch.Tensor:
        """The loss of the last forward pass (and forget it, ready for the next one)."""
        if not self.terms:
            raise RuntimeError("BNStatsLoss.loss() called before a forward pass")
        value = torch.stack(self.terms).sum() / len(self.layers)
        self.terms = []
        return value

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> BNStatsLoss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
