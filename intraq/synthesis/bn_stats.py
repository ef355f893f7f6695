"""BatchNorm hooks (methods §2.1.3, §3.2): one collector of a per-layer term of each BN layer's *input*.

`BNHooks` registers a forward hook on every BatchNorm2d and keeps one term per layer from the last forward
pass; `BNStatsLoss` (IntraQ, GDFQ, Qimera: mean over layers of MSE to the running stats) and
`BNFeatureLoss` (DeepInversion: R_feature, summed, the first layer weighted) are its two terms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

LayerTerm = Callable[[torch.Tensor, nn.BatchNorm2d], torch.Tensor]
Hooks = TypeVar("Hooks", bound="BNHooks")


class BNHooks:
    """Forward hooks on every BatchNorm2d that store `term(bn_input, layer)` for the last forward pass.

    `pop()` returns the terms as {index in module order: term}, in the order the layers ran, and forgets them.
    Use as a context manager so the hooks are removed afterwards.
    """

    def __init__(self, model: nn.Module, term: LayerTerm, what: str = "this loss") -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm2d layer: {what} needs one")
        self.term, self.what = term, what
        self.terms: dict[int, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.terms[index] = self.term(inputs[0], module)  # type: ignore[arg-type]

        return hook

    def pop(self) -> dict[int, torch.Tensor]:
        if not self.terms:
            raise RuntimeError(f"{type(self).__name__}.loss() called before a forward pass")
        terms, self.terms = self.terms, {}
        return terms

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self: Hooks) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def batch_mean_var(x: torch.Tensor, fast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W).

    `fast`: E[x^2] - E[x]^2, one fused pass instead of torch.var's two (var was ~25% of generation time on
    CPU); agrees with torch.var to float32 rounding for BN inputs, whose mean is not >> their std.
    """
    mean = x.mean(dim=(0, 2, 3))
    if fast:
        return mean, ((x * x).mean(dim=(0, 2, 3)) - mean * mean).clamp_min(0.0)
    return mean, x.var(dim=(0, 2, 3), unbiased=False)


class BNStatsLoss(BNHooks):
    """`loss()` = mean over layers of [MSE(mean, running_mean) + MSE(var, running_var)] of the BN input.

    As IntraQ, GDFQ and Qimera compute it (MSE averages over channels; no first-layer multiplier).
    `fast=False` is the plain reference computation (torch.var) that the fast path is tested against.
    """

    def __init__(self, model: nn.Module, fast: bool = True) -> None:
        self.fast = fast
        super().__init__(model, self._mse_term, "the BNS loss")

    def _mse_term(self, x: torch.Tensor, module: nn.BatchNorm2d) -> torch.Tensor:
        mean, var = batch_mean_var(x, self.fast)
        return F.mse_loss(mean, module.running_mean) + F.mse_loss(var, module.running_var)

    def loss(self) -> torch.Tensor:
        """The loss of the last forward pass (and forget it, ready for the next one)."""
        return torch.stack(list(self.pop().values())).sum() / len(self.layers)


def r_feature_term(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """‖running_var - var‖₂ + ‖running_mean - mean‖₂ with the biased var over (N, H, W) of the BN input."""
    mean, var = batch_mean_var(x, fast=False)
    return torch.linalg.vector_norm(running_var - var) + torch.linalg.vector_norm(running_mean - mean)


class BNFeatureLoss(BNHooks):
    """DeepInversion's R_feature of the last forward pass, summed over layers.

    Terms are indexed by module order, so the first BN *in module order* gets the multiplier even if a
    model runs its layers in another order.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, lambda x, m: r_feature_term(x, m.running_mean, m.running_var), "R_feature")

    def loss(self, first_bn_multiplier: float) -> torch.Tensor:
        """Sum of the per-layer terms, the first ×`first_bn_multiplier`; forgets them for the next pass."""
        terms = self.pop()
        return sum(term * (first_bn_multiplier if i == 0 else 1.0) for i, term in terms.items())  # type: ignore[return-value]
