"""Is a stage-2 learning rate stable for this student? Sharpness of the KD loss against SGD's stability bound.

Fine-tuning at the official lr 1e-4 diverges on some teachers and image sets and not on others (issue 17). Near
a minimum, SGD with momentum is stable only while lr * lambda_max stays below a bound set by the momentum, where
lambda_max is the largest eigenvalue of the loss's Hessian (its sharpness). Measuring lambda_max at the start of
fine-tuning (Hessian-vector products by double backward, power iteration) says within a minute on a CPU how far an
lr is from that bound, before a run spends hours finding out. With the lineage's straight-through quantizers the
Hessian is that of the straight-through surrogate (the full-precision network evaluated at the quantized weights
and activations), which is what SGD follows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from intraq.config import FinetuneConfig
from intraq.finetune.kd import kd_loss_intraq

SHARPNESS_SEED_OFFSET = 7919  # the measurement's own draws, apart from the steps' (seeded by the case seed)


def momentum_lr_bound(curvature: float, momentum: float, nesterov: bool, weight_decay: float = 0.0) -> float:
    """Largest lr for which torch's SGD stays stable on a quadratic of this curvature.

    torch's update is buf = m*buf + g, then w -= lr*(g + m*buf) (Nesterov) or w -= lr*buf: on g = c*w the iteration
    matrix gets an eigenvalue -1 at lr*c = 2(1+m)/(1+2m) (Nesterov) or 2(1+m) (heavy ball); 2 without momentum.
    The optimizer's weight decay adds its coefficient to the curvature."""
    curvature += weight_decay
    if curvature <= 0:
        return float("inf")
    scale = 2 * (1 + momentum) / (1 + 2 * momentum) if nesterov else 2 * (1 + momentum)
    return scale / curvature


@dataclass
class Sharpness:
    top_eigenvalue: float  # largest Hessian eigenvalue (Rayleigh quotient at the last iterate)
    iterations: int
    converged: bool  # relative change of the estimate below the tolerance
    estimates: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def top_hessian_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: Sequence[nn.Parameter],
    iterations: int = 30,
    tolerance: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Sharpness:
    """Power iteration on the Hessian of `loss_fn()` with respect to `params` (one forward, one graph kept).

    Finds the eigenvalue of largest magnitude; at the start of fine-tuning that is normally the largest positive
    one (a negative result says otherwise, and no lr bound follows from it). The Rayleigh quotient approaches it
    from below, so a bound computed from it errs on the high side by about the tolerance."""
    params = [p for p in params if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vector = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    estimates: list[float] = []
    converged = False
    for _ in range(iterations):
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        vector = [v / norm for v in vector]
        hvp = torch.autograd.grad(grads, params, grad_outputs=vector, retain_graph=True)
        estimates.append(float(sum((h * v).sum() for h, v in zip(hvp, vector, strict=True))))
        vector = [h.detach() for h in hvp]
        if len(estimates) > 1 and abs(estimates[-1] - estimates[-2]) <= tolerance * abs(estimates[-1]):
            converged = True
            break
    return Sharpness(estimates[-1], len(estimates), converged, estimates)


def kd_sharpness(
    student: nn.Module, teacher: nn.Module, images: Tensor, labels: Tensor,
    augment: Callable[[Tensor, torch.Generator], Tensor], cfg: FinetuneConfig, seed: int, iterations: int,
    device: torch.device,
) -> dict[str, Any]:
    """The KD loss's sharpness at `student` on one augmented batch of `images`, and the lr bound of the case's SGD
    there: what a record keeps to say how far its lr was from stable when fine-tuning began.

    Its batch and start vector come from a generator of its own (seed + SHARPNESS_SEED_OFFSET), and it takes
    gradients with `torch.autograd.grad` only, so the run's draws, weights and `.grad` stay as they were. A
    measurement that fails (e.g. out of memory for the double backward at ImageNet scale) is recorded as
    `{"error": ...}` instead of stopping the run it describes."""
    generator = torch.Generator().manual_seed(seed + SHARPNESS_SEED_OFFSET)
    idx = torch.randint(len(images), (min(cfg.batch_size, len(images)),), generator=generator)
    tic = time.perf_counter()
    try:
        x, y = augment(images[idx].to(device), generator), labels[idx].to(device)
        with torch.no_grad():
            teacher_logits = teacher(x)
        result = top_hessian_eigenvalue(
            lambda: kd_loss_intraq(student(x), teacher_logits, y, cfg.temperature, cfg.alpha),
            list(student.parameters()), iterations=iterations, generator=generator,
        )
    except RuntimeError as error:  # torch's OutOfMemoryError is one
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                "seconds": time.perf_counter() - tic}
    bound = momentum_lr_bound(result.top_eigenvalue, cfg.momentum, cfg.nesterov, cfg.weight_decay)
    finite = math.isfinite(bound)  # records are JSON: no Infinity in them
    return {**result.to_dict(), "lr_bound": bound if finite else None,
            "lr_over_bound": cfg.lr / bound if finite else None, "seconds": time.perf_counter() - tic,
            "note": "top Hessian eigenvalue of the KD loss (straight-through surrogate) at the calibrated student, one "
                    "augmented batch (power iteration: approached from below); lr_bound: largest stable lr of the "
                    "case's SGD on a quadratic of that curvature (null: the eigenvalue found is negative, no bound)"}
