"""Throughput measurements (issue: fast generation and fine-tuning): what fraction of the machine's peak we use.

Generation throughput is image-iterations per second of IntraQ's inner loop (teacher forward + input-gradient
backward + Adam on the images); fine-tuning throughput is images per second of a KD step. Both are also given
as a fraction of the measured fp32 matmul peak, counting the FLOPs of the work each step must do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from intraq.config import FinetuneConfig, QuantConfig
from intraq.finetune.augment import make_finetune_augment
from intraq.finetune.kd import kd_loss_intraq
from intraq.quantize import quantize_model, set_act_calibration
from intraq.synthesis.bn_stats import BNStatsLoss


@dataclass
class Throughput:
    name: str
    items_per_second: float
    flops_per_item: float
    peak_flops: float
    seconds_per_step: float
    batch: int
    threads: int

    @property
    def fraction_of_peak(self) -> float:
        return self.items_per_second * self.flops_per_item / self.peak_flops

    def to_dict(self) -> dict:
        return asdict(self) | {"fraction_of_peak": self.fraction_of_peak}


def matmul_peak_flops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """The machine's measured fp32 matrix-multiply peak: the faster of BLAS `mm` and oneDNN's GEMM-shaped
    (1x1, channels-last) convolution. On this AMD CPU, MKL's sgemm reaches ~200 GFLOP/s on 2 cores and
    oneDNN's ~330, and the convolutions we time run on oneDNN, so the BLAS figure alone would understate it."""
    return max(matmul_peaks(n, repeats, device).values())


def matmul_peaks(n: int = 2048, repeats: int = 5, device: str = "cpu") -> dict[str, float]:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    x = torch.randn(32, 512, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 1, 1, device=device).contiguous(memory_format=torch.channels_last)

    def best(fn: Callable[[], object]) -> float:
        fn()
        fastest = float("inf")
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            if device != "cpu":
                torch.cuda.synchronize()
            fastest = min(fastest, time.perf_counter() - tic)
        return fastest

    return {
        "mm": 2 * n**3 / best(lambda: a @ b),
        "conv1x1": 2 * 32 * 32 * 32 * 512 * 512 / best(lambda: torch.nn.functional.conv2d(x, w)),
    }


def count_flops(step: Callable[[], None]) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _time(step: Callable[[], None], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - tic) / steps


def generation_step(
    teacher: nn.Module, batch: int, image_size: int, channels_last: bool, fast_bns: bool, seed: int = 0,
    compiled: bool = False,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """One IntraQ-style image update (BNS + CE, no LOR); returns (step, cleanup)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher = teacher.eval().requires_grad_(False).to(memory_format=memory_format)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=generator)
    x = x.contiguous(memory_format=memory_format).requires_grad_(True)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    optimizer = torch.optim.Adam([x], lr=0.5)
    bns = BNStatsLoss(teacher, fast=fast_bns)

    def loss_fn(inputs: torch.Tensor) -> torch.Tensor:
        logits = teacher(inputs)  # first: the forward fills the BN hooks that bns.loss() reads
        return bns.loss() + nn.functional.cross_entropy(logits, labels)

    compute = torch.compile(loss_fn) if compiled else loss_fn

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = compute(x)
        loss.backward()
        optimizer.step()
        float(loss.detach())  # the plateau scheduler's per-iteration sync

    return step, bns.remove


def measure_generation(
    teacher: nn.Module, batch: int = 256, image_size: int = 32, channels_last: bool = True, fast_bns: bool = True,
    warmup: int = 2, steps: int = 8, peak: float | None = None, compiled: bool = False,
) -> Throughput:
    plain_step, plain_cleanup = generation_step(teacher, batch, image_size, channels_last, fast_bns)
    flops = count_flops(plain_step) / batch
    plain_cleanup()
    step, cleanup = generation_step(teacher, batch, image_size, channels_last, fast_bns, compiled=compiled)
    try:
        seconds = _time(step, warmup + (2 if compiled else 0), steps)
    finally:
        cleanup()
    name = "generation" + (" (compiled)" if compiled else "" if channels_last and fast_bns else " (reference path)")
    return Throughput(name, batch / seconds, flops, peak or matmul_peak_flops(), seconds, batch,
                      torch.get_num_threads())


def measure_finetune(
    teacher: nn.Module, batch: int = 256, image_size: int = 32, channels_last: bool = True,
    warmup: int = 2, steps: int = 8, peak: float | None = None,
) -> Throughput:
    """One KD fine-tuning step of the W4A4 student (augment, teacher forward, student forward+backward, SGD)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher = teacher.eval().requires_grad_(False).to(memory_format=memory_format)
    student = quantize_model(teacher, QuantConfig()).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    set_act_calibration(student, True)
    with torch.no_grad():
        student(images)
    set_act_calibration(student, False)
    student.eval()
    augment = make_finetune_augment(FinetuneConfig())
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step() -> None:
        x = augment(images, generator).contiguous(memory_format=memory_format)
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = kd_loss_intraq(student(x), teacher_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    flops = count_flops(step) / batch
    seconds = _time(step, warmup, steps)
    return Throughput("fine-tuning", batch / seconds, flops, peak or matmul_peak_flops(), seconds, batch,
                      torch.get_num_threads())
