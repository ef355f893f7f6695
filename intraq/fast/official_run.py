"""GPU seconds of one official `cifar10` run (issue 12 item 4), measured on cut runs and scaled to full length.

An official CIFAR-10 run: 20 image batches x 1,000 iterations of 256 (stage 1), then 4 calibration epochs and
147 KD epochs of 200 steps of 256 with a test evaluation after every epoch (stage 2). Measuring it whole takes
minutes per run, so K runs are stepped together (stacked, `intraq.fast`) and cut:

- stage 1: 2 of the 20 batches, each 1,000 iterations; the first includes capture/compilation. Full length =
  first + 19 x second.
- stage 2: 4 calibration epochs (official GDFQ-generator calibration) + 4 KD epochs with evaluation on a
  10,000-image test set after each, timed per epoch. Full length = the 4 calibration epochs + the first KD
  epoch (capture included) + 146 x the median of the other KD epochs.

Divided by K this is the GPU seconds per run at concurrency K. The network and data are random (a ResNet-20
with random BN statistics, N(0,1) images): the work per step is that of a real run, the accuracies mean nothing.
`python -m intraq.fast.official_run --runs K --json OUT` runs one measurement (the benchmark starts several at
once to measure several processes per GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from intraq.config import FinetuneConfig, QuantConfig
from intraq.fast.finetune import FinetuneRun, finetune_fast
from intraq.fast.settings import FastSettings, default_fast_settings
from intraq.fast.synthesis import StackedBatchOptimizer, draw_batch
from intraq.quantize import quantize_model
from intraq.synthesis.gdfq import GdfqCalibrationSource
from intraq.synthesis.settings import SynthSettings, effective_synth_settings
from intraq.teacher.models import build_model

OFFICIAL = {"batches": 20, "iterations": 1000, "batch": 256, "images": 5120, "epochs": 151, "calib_epochs": 4,
            "iters_per_epoch": 200, "test_images": 10_000}


def official_synth_settings(iterations: int, batch: int) -> SynthSettings:
    """IntraQ's official CIFAR-10 stage-1 settings (the `cifar10` profile's), with a cut iteration count and batch."""
    from intraq.config import apply_overrides
    from intraq.profiles import get_profile

    cfg = apply_overrides(get_profile("cifar10"), [f"synth.iterations={iterations}", f"synth.batch_size={batch}"])
    return effective_synth_settings(cfg, "cifar10", "intraq")


def random_teacher(device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = build_model("resnet20", 10)
    for bn in teacher.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return teacher.eval().to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(runs: int, device: torch.device, fast: FastSettings, iterations: int, batch: int) -> dict:
    teacher = random_teacher(device)
    settings = official_synth_settings(iterations, batch)
    optimizer = StackedBatchOptimizer(teacher, settings, runs, batch, (3, 32, 32), device, fast)
    times = []
    try:
        for k in range(2):
            draws = [draw_batch(seed, k, batch, 3, 32, 10, settings) for seed in range(runs)]
            centers = [None] * runs if k == 0 else [(torch.randn(batch, optimizer.feature_dim, device=device),
                                                     torch.ones(batch, device=device))] * runs
            _sync(device)
            tic = time.perf_counter()
            with fast.numeric_applied():  # as the pipeline's fast generation runs (finetune_fast does the same)
                optimizer.optimize(draws, centers)
            _sync(device)
            times.append(time.perf_counter() - tic)
    finally:
        optimizer.close()
    return {"first_batch_s": times[0], "steady_batch_s": times[1],
            "image_iterations_per_s": runs * batch * iterations / times[1]}


def time_finetune(runs: int, device: torch.device, fast: FastSettings, kd_epochs: int, iters_per_epoch: int,
                  batch: int, n_images: int, test_images: int) -> dict:
    teacher = random_teacher(device)
    cfg = FinetuneConfig(epochs=OFFICIAL["calib_epochs"] + kd_epochs, iters_per_epoch=iters_per_epoch,
                         batch_size=batch, eval_every=1)
    g = torch.Generator().manual_seed(0)
    fine_runs = []
    for seed in range(runs):
        source = GdfqCalibrationSource(teacher=teacher, num_classes=10, image_size=32, latent_dim=cfg.gdfq_latent_dim,
                                       lr=cfg.gdfq_lr, batch_size=cfg.calib_batch_size, device=device,
                                       generator=torch.Generator().manual_seed(seed + 1), conditional_bn=False)
        fine_runs.append(FinetuneRun(quantize_model(teacher, QuantConfig()).to(device),
                                     torch.randn(n_images, 3, 32, 32, generator=g),
                                     torch.randint(0, 10, (n_images,), generator=g), source, seed, cfg))
    test_x = torch.randn(test_images, 3, 32, 32, generator=g)
    test_y = torch.randint(0, 10, (test_images,), generator=g)
    stamps: list[float] = []

    def on_epoch(epoch: int) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    _sync(device)
    start = time.perf_counter()
    results = finetune_fast(fine_runs, teacher, test_x, test_y, device, fast, progress=False, on_epoch=on_epoch)
    epochs = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    calib = epochs[:OFFICIAL["calib_epochs"]]
    kd = epochs[OFFICIAL["calib_epochs"]:]
    return {"calibration_epochs_s": calib, "kd_epochs_s": kd, "seconds": results[0].seconds,
            "kd_images_per_s": runs * batch * iters_per_epoch / statistics.median(kd[1:] or kd)}


def measure_official_run(runs: int, device: torch.device, capture: str | None = None, kd_epochs: int = 4,
                         iterations: int = OFFICIAL["iterations"], iters_per_epoch: int = OFFICIAL["iters_per_epoch"],
                         test_images: int = OFFICIAL["test_images"], batch: int = OFFICIAL["batch"],
                         n_images: int = OFFICIAL["images"]) -> dict:
    """Cut runs timed end to end and scaled to an official run (see the module doc). Smaller iterations, steps
    and test sets are scaled up; a smaller `batch` / `n_images` is not (tests only: the result is then no
    measurement of an official run, and says so in `official_work`)."""
    fast = default_fast_settings(device, capture)
    tic = time.perf_counter()
    gen = time_generation(runs, device, fast, iterations, batch)
    ft = time_finetune(runs, device, fast, kd_epochs, iters_per_epoch, batch, n_images, test_images)
    measured = time.perf_counter() - tic
    scale_iter = OFFICIAL["iterations"] / iterations
    scale_steps = OFFICIAL["iters_per_epoch"] / iters_per_epoch
    generation = (gen["first_batch_s"] + (OFFICIAL["batches"] - 1) * gen["steady_batch_s"]) * scale_iter
    kd_full = OFFICIAL["epochs"] - OFFICIAL["calib_epochs"]
    steady = statistics.median(ft["kd_epochs_s"][1:] or ft["kd_epochs_s"])
    finetune = (sum(ft["calibration_epochs_s"]) + ft["kd_epochs_s"][0] + (kd_full - 1) * steady) * scale_steps
    return {
        "runs_stacked": runs, "device": str(device), "fast": fast.record(),
        "official_work": batch == OFFICIAL["batch"] and n_images == OFFICIAL["images"],
        "generation": gen, "finetune": ft, "measured_wall_s": measured,
        "full_run_seconds_for_all": generation + finetune,
        "seconds_per_run": (generation + finetune) / runs,
        "generation_seconds_per_run": generation / runs, "finetune_seconds_per_run": finetune / runs,
        "scaling": (f"stage 1: first + {OFFICIAL['batches'] - 1} x second batch of {iterations} iterations"
                    f" (x{scale_iter:g} to 1,000); stage 2: 4 calibration epochs + first KD epoch + {kd_full - 1} x"
                    f" median later KD epoch, each with a {test_images}-image evaluation, {iters_per_epoch} steps"
                    f" per epoch (x{scale_steps:g} to 200); divided by {runs} stacked runs"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs stacked in this process")
    parser.add_argument("--capture", default=None, help="none | compile | cudagraph (default: cudagraph on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kd-epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=OFFICIAL["iterations"])
    parser.add_argument("--iters-per-epoch", type=int, default=OFFICIAL["iters_per_epoch"])
    parser.add_argument("--test-images", type=int, default=OFFICIAL["test_images"])
    parser.add_argument("--json", type=Path, default=None, help="write the measurement here")
    args = parser.parse_args(argv)
    out = measure_official_run(args.runs, torch.device(args.device), args.capture, args.kd_epochs, args.iterations,
                               args.iters_per_epoch, args.test_images)
    text = json.dumps(out, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
