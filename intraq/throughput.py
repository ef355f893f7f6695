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


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], None], warmup: int, steps: int, device: str | torch.device = "cpu") -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - tic) / steps


def generation_step(
    teacher: nn.Module, batch: int, image_size: int, channels_last: bool, fast_bns: bool, seed: int = 0,
    compiled: bool = False, device: str | torch.device = "cpu",
) -> tuple[Callable[[], None], Callable[[], None]]:
    """One IntraQ-style image update (BNS + CE, no LOR); returns (step, cleanup)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher = teacher.eval().requires_grad_(False).to(device=device, memory_format=memory_format)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    x = x.contiguous(memory_format=memory_format).requires_grad_(True)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
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
    device: str | torch.device = "cpu",
) -> Throughput:
    plain_step, plain_cleanup = generation_step(teacher, batch, image_size, channels_last, fast_bns, device=device)
    flops = count_flops(plain_step) / batch
    plain_cleanup()
    step, cleanup = generation_step(teacher, batch, image_size, channels_last, fast_bns, compiled=compiled,
                                    device=device)
    try:
        seconds = _time(step, warmup + (2 if compiled else 0), steps, device)
    finally:
        cleanup()
    name = "generation" + (" (compiled)" if compiled else "" if channels_last and fast_bns else " (reference path)")
    return Throughput(name, batch / seconds, flops, peak or matmul_peak_flops(), seconds, batch,
                      torch.get_num_threads())


def measure_finetune(
    teacher: nn.Module, batch: int = 256, image_size: int = 32, channels_last: bool = True,
    warmup: int = 2, steps: int = 8, peak: float | None = None, device: str | torch.device = "cpu",
) -> Throughput:
    """One KD fine-tuning step of the W4A4 student (augment, teacher forward, student forward+backward, SGD)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher = teacher.eval().requires_grad_(False).to(device=device, memory_format=memory_format)
    student = quantize_model(teacher, QuantConfig()).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
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
    seconds = _time(step, warmup, steps, device)
    return Throughput("fine-tuning", batch / seconds, flops, peak or matmul_peak_flops(), seconds, batch,
                      torch.get_num_threads())


def cuda_tf32_peaks(repeats: int = 10, device: str | torch.device = "cuda") -> dict[str, float]:
    """The GPU's measured TF32 peak: a large matmul and a large 3x3 convolution (cuDNN), TF32 allowed for the
    measurement only. Fractions of peak below are relative to the larger of the two."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    try:
        n = 8192
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        x = torch.randn(256, 256, 56, 56, device=device).contiguous(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)

        def best(fn: Callable[[], object]) -> float:
            fn()
            _sync(device)
            fastest = float("inf")
            for _ in range(repeats):
                tic = time.perf_counter()
                fn()
                _sync(device)
                fastest = min(fastest, time.perf_counter() - tic)
            return fastest

        conv_flops = 2 * 256 * 56 * 56 * 256 * 256 * 9
        return {"mm_tf32": 2 * n**3 / best(lambda: a @ b),
                "conv3x3_tf32": conv_flops / best(lambda: torch.nn.functional.conv2d(x, w, padding=1))}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags


def measure_generation_fast(
    model: str, num_classes: int, batch: int, image_size: int, runs: int, device: torch.device, flops_per_item: float,
    peak: float, capture: str | None = None, iterations: int = 20,
) -> Throughput:
    """Image-iterations per second of the fast stage-1 path (R runs stacked; IntraQ losses with LOR and MDC).

    Timed on a second batch of `iterations` (the first pays capture/compilation)."""
    from intraq.fast.official_run import official_synth_settings
    from intraq.fast.settings import default_fast_settings
    from intraq.fast.synthesis import StackedBatchOptimizer, draw_batch
    from intraq.teacher.models import build_model

    torch.manual_seed(0)
    teacher = build_model(model, num_classes).eval().to(device)
    settings = official_synth_settings(iterations, batch)
    fast = default_fast_settings(device, capture)
    optimizer = StackedBatchOptimizer(teacher, settings, runs, batch, (3, image_size, image_size), device, fast)
    try:
        seconds = 0.0
        for k in range(2):
            draws = [draw_batch(seed, k, batch, 3, image_size, num_classes, settings) for seed in range(runs)]
            _sync(device)
            tic = time.perf_counter()
            with fast.numeric_applied():
                optimizer.optimize(draws, [None] * runs)
            _sync(device)
            seconds = time.perf_counter() - tic
    finally:
        optimizer.close()
    name = f"generation fast ({model}, {image_size}px, x{runs} runs, capture {fast.capture})"
    return Throughput(name, runs * batch * iterations / seconds, flops_per_item, peak, seconds / iterations,
                      batch * runs, torch.get_num_threads())


def measure_finetune_fast(
    model: str, num_classes: int, batch: int, image_size: int, runs: int, device: torch.device, flops_per_item: float,
    peak: float, capture: str | None = None, steps: int = 20, n_images: int = 512,
) -> Throughput:
    """Images per second of the fast stage-2 KD step (R runs stacked), from the steady KD epochs of a short run."""
    from intraq.fast.finetune import FinetuneRun, finetune_fast
    from intraq.fast.settings import default_fast_settings
    from intraq.finetune.trainer import ImageSetCalibration
    from intraq.teacher.models import build_model

    torch.manual_seed(0)
    teacher = build_model(model, num_classes).eval().to(device)
    cfg = FinetuneConfig(epochs=4, calib_epochs=1, iters_per_epoch=steps, batch_size=batch, calib_source="train",
                         eval_every=1000)
    g = torch.Generator().manual_seed(0)
    runs_in = []
    for seed in range(runs):
        images = torch.randn(n_images, 3, image_size, image_size, generator=g)
        calib = ImageSetCalibration(images, batch, torch.Generator().manual_seed(seed), device)
        runs_in.append(FinetuneRun(quantize_model(teacher, QuantConfig()).to(device), images,
                                   torch.randint(0, num_classes, (n_images,), generator=g), calib, seed, cfg))
    stamps: list[float] = []

    def on_epoch(epoch: int) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    test_x = torch.randn(2 * batch, 3, image_size, image_size, generator=g)
    test_y = torch.randint(0, num_classes, (2 * batch,), generator=g)
    fast = default_fast_settings(device, capture)
    finetune_fast(runs_in, teacher, test_x, test_y, device, fast, progress=False, on_epoch=on_epoch)
    seconds = stamps[2] - stamps[1]  # the second KD epoch: capture done, no evaluation
    name = f"fine-tuning fast ({model}, {image_size}px, x{runs} runs, capture {fast.capture})"
    return Throughput(name, runs * batch * steps / seconds, flops_per_item, peak, seconds / steps, batch * runs,
                      torch.get_num_threads())
