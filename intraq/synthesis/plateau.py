"""ReduceLROnPlateau without a host sync: the official schedule (stepped every iteration, T8), kept on device.

torch's ReduceLROnPlateau compares Python floats, so stepping it every iteration forces one device-to-host
copy per iteration. This keeps best, the bad-iteration count and the learning rate as 0-d tensors and
updates them with tensor ops; the optimizer reads the lr tensor. Same rule as torch (mode min, relative
threshold, no cooldown): a loss is better if < best * (1 - threshold); after more than `patience` worse
ones, lr = max(lr * factor, min_lr) if that lowers it by more than eps.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def plateau_step(state: DevicePlateau | Any, loss: torch.Tensor) -> None:
    """One step of the rule above on `state`'s lr, best and bad tensors: 0-d for one run, (R,) for R stacked runs
    (`intraq.fast.optim.PlateauState`), with its factor, patience, threshold, min_lr and eps."""
    loss = loss.detach().to(state.best.dtype)
    better = loss < state.best * (1.0 - state.threshold)
    state.best.copy_(torch.where(better, loss, state.best))
    state.bad.copy_(torch.where(better, torch.zeros_like(state.bad), state.bad + 1))
    reduce = state.bad > state.patience
    new_lr = torch.clamp(state.lr * state.factor, min=state.min_lr)
    lower = reduce & (state.lr - new_lr > state.eps)
    state.lr.copy_(torch.where(lower, new_lr, state.lr))
    state.bad.copy_(torch.where(reduce, torch.zeros_like(state.bad), state.bad))


class DevicePlateau:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        group = optimizer.param_groups[0]
        if len(optimizer.param_groups) != 1:
            raise ValueError("DevicePlateau handles one parameter group")
        device = group["params"][0].device
        lr = group["lr"]
        self.lr = lr if isinstance(lr, torch.Tensor) else torch.tensor(float(lr), device=device)
        group["lr"] = self.lr  # Adam/SGD accept a tensor lr and read it at every step
        self.best = torch.tensor(float("inf"), device=device)
        self.bad = torch.zeros((), dtype=torch.long, device=device)
        self.factor, self.patience, self.threshold, self.min_lr, self.eps = factor, patience, threshold, min_lr, eps

    def step(self, loss: torch.Tensor) -> None:
        plateau_step(self, loss)

    def current_lr(self) -> float:
        """The lr as a float (a host sync: for logging only)."""
        return float(self.lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"lr": self.lr, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copied into the existing tensors: the optimizer keeps reading the same lr tensor."""
        for name in ("lr", "best", "bad"):
            getattr(self, name).copy_(state[name])
