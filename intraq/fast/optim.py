"""Functional SGD and plateau schedule for R runs stacked along a leading axis, with per-run tensor lr.

No host value enters a step (lr, step count and plateau state are device tensors), so a step can be captured
in a CUDA graph once and replayed. The arithmetic is torch's: SGD with momentum/Nesterov/weight decay
(`torch.optim.SGD`, dampening 0: a zero-initialised buffer gives exactly its first-step clone) and
ReduceLROnPlateau's rule as
`intraq.synthesis.plateau.DevicePlateau` keeps it on the device. Equal to them up to float rounding.
"""

from __future__ import annotations

import torch

from intraq.synthesis.plateau import plateau_step


def per_run(value: torch.Tensor, like: torch.Tensor, stacked: bool) -> torch.Tensor:
    """A (R,) per-run value shaped to broadcast over a stacked (R, ...) tensor, or a 0-d one if not stacked."""
    if not stacked:
        return value.reshape(())
    return value.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def sgd_step(
    params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], lr: torch.Tensor,
    momentum: float, weight_decay: float, nesterov: bool, stacked: bool,
) -> None:
    for p, g, buf in zip(params, grads, buffers, strict=True):
        d_p = g.add(p, alpha=weight_decay) if weight_decay else g
        if momentum:
            buf.mul_(momentum).add_(d_p)
            d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
        p.sub_(per_run(lr, p, stacked) * d_p)


class PlateauState:
    """Per-run ReduceLROnPlateau (mode min, relative threshold, no cooldown), as DevicePlateau, vectorized."""

    def __init__(self, lr: torch.Tensor, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 min_lr: float = 0.0, eps: float = 1e-8) -> None:
        self.lr = lr
        self.best = torch.full_like(lr, float("inf"))
        self.bad = torch.zeros(lr.shape, dtype=torch.long, device=lr.device)
        self.factor, self.patience, self.threshold, self.min_lr, self.eps = factor, patience, threshold, min_lr, eps

    def tensors(self) -> list[torch.Tensor]:
        return [self.lr, self.best, self.bad]

    @torch.no_grad()
    def reset(self, lr: float) -> None:
        self.lr.fill_(lr)
        self.best.fill_(float("inf"))
        self.bad.zero_()

    def step(self, loss: torch.Tensor) -> None:
        plateau_step(self, loss)
