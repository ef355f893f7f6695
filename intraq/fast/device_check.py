"""Fast path = reference path on the device at hand (the GPU step of bench/device/check.sh; runs on a CPU too).

Five checks, each written to the JSON as it finishes, with its numbers and a verdict:
- `finetune`: the reference trainer and the fast path (each capture mode that the device supports) for a few
  hundred KD steps of a random ResNet-20 on random CIFAR-10-shaped images: per-epoch losses and accuracies;
- `generation`: the reference IntraQ generation and the fast path on the embedded digits (BNS, SIL, MDC, LOR):
  per-batch losses;
- `stacked`: two runs stacked against the same two runs alone (fine-tuning);
- `calibration`: the official GDFQ calibration (`intraq.fast.calibration`) against the reference `calibrate`;
- `finetune_compile`: the fine-tuning check with `capture="compile"` (last: it compiles for a while).
Each mode's `seconds` are the data for choosing the capture mode (and INTRAQ_BENCH_CAPTURE of the benchmark).
Both paths run with the same TF32/cuDNN flags (`NumericSettings`, official defaults, or TF32 off with `--strict`),
recorded in the output. Tolerances are those of the CPU tests, widened for TF32 where a check runs with it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from intraq.config import DataConfig, FinetuneConfig, QuantConfig, RunConfig, SynthConfig
from intraq.fast.finetune import FinetuneRun, finetune_fast
from intraq.fast.official_run import random_teacher
from intraq.fast.settings import FastSettings, NumericSettings, current_numeric_settings
from intraq.fast.synthesis import generate_stacked


def _history_gap(a: list[dict], b: list[dict]) -> dict[str, float]:
    loss = max((abs(x["loss"] - y["loss"]) / max(abs(y["loss"]), 1e-12) for x, y in zip(a, b, strict=True)
                if "loss" in y), default=0.0)
    acc = max((abs(x["acc"] - y["acc"]) for x, y in zip(a, b, strict=True) if "acc" in y), default=0.0)
    return {"max_rel_loss_gap": loss, "max_acc_gap_points": acc}


def _finetune_runs(teacher, sets, seeds, cfg, device):
    from intraq.finetune.trainer import ImageSetCalibration

    return [FinetuneRun(quantize(teacher), x, y, ImageSetCalibration(x, cfg.calib_batch_size,
                                                                      torch.Generator().manual_seed(s + 1), device),
                        s, cfg) for (x, y), s in zip(sets, seeds, strict=True)]


def quantize(teacher):
    from intraq.quantize import quantize_model

    return quantize_model(teacher, QuantConfig())


def check_finetune(device: torch.device, steps: int, modes: list[str], n_images: int = 512,
                   n_test: int = 1000) -> dict[str, Any]:
    from intraq.evaluate import evaluate
    from intraq.finetune.augment import make_finetune_augment
    from intraq.finetune.trainer import ImageSetCalibration, finetune

    teacher = random_teacher(device)
    cfg = FinetuneConfig(epochs=4, calib_epochs=1, iters_per_epoch=steps // 3, batch_size=64, lr=1e-3,
                         lr_steps=(2,), calib_source="train", calib_batch_size=64)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(n_images, 3, 32, 32, generator=g), torch.randint(0, 10, (n_images,), generator=g)
    test_x, test_y = torch.randn(n_test, 3, 32, 32, generator=g), torch.randint(0, 10, (n_test,), generator=g)
    test_set = torch.utils.data.TensorDataset(test_x, test_y)
    student = quantize(teacher).to(device)
    calib = ImageSetCalibration(images, cfg.calib_batch_size, torch.Generator().manual_seed(6), device)
    tic = time.perf_counter()
    ref = finetune(student, copy.deepcopy(teacher), images, labels, lambda m: evaluate(m, test_set, 500, device),
                   calib, make_finetune_augment(cfg), cfg, device, 5, progress=False)
    out: dict[str, Any] = {"steps": (cfg.epochs - 1) * cfg.iters_per_epoch, "reference_s": time.perf_counter() - tic,
                           "reference_history": ref.history}
    for mode in modes:
        tic = time.perf_counter()
        try:
            (fast,) = finetune_fast(_finetune_runs(teacher, [(images, labels)], [5], cfg, device),
                                    copy.deepcopy(teacher), test_x, test_y, device, FastSettings(capture=mode),
                                    progress=False)
        except Exception as exc:  # one capture mode failing must not hide the others
            out[mode] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[mode] = {"seconds": time.perf_counter() - tic, **_history_gap(fast.history, ref.history),
                     "history": fast.history}
    return out


def check_stacked(device: torch.device, steps: int, n_images: int = 256, n_test: int = 1000) -> dict[str, Any]:
    teacher = random_teacher(device)
    cfg = FinetuneConfig(epochs=3, calib_epochs=1, iters_per_epoch=steps // 2, batch_size=64, lr=1e-3,
                         calib_source="train", calib_batch_size=64)
    g = torch.Generator().manual_seed(1)
    sets = [(torch.randn(n_images, 3, 32, 32, generator=g), torch.randint(0, 10, (n_images,), generator=g))
            for _ in range(2)]
    test_x, test_y = torch.randn(n_test, 3, 32, 32, generator=g), torch.randint(0, 10, (n_test,), generator=g)
    capture = "cudagraph" if device.type == "cuda" else "none"
    alone = [finetune_fast(_finetune_runs(teacher, [s], [i], cfg, device), copy.deepcopy(teacher), test_x, test_y,
                           device, FastSettings(capture=capture), progress=False)[0] for i, s in enumerate(sets)]
    both = finetune_fast(_finetune_runs(teacher, sets, [0, 1], cfg, device), copy.deepcopy(teacher), test_x, test_y,
                         device, FastSettings(capture=capture), progress=False)
    return {"capture": capture, "runs": [_history_gap(b.history, a.history) for a, b in zip(alone, both, strict=True)]}


def check_generation(device: torch.device, iterations: int) -> dict[str, Any]:
    from intraq.data import build_data
    from intraq.synthesis.base import SynthContext
    from intraq.synthesis.intraq import effective_synth_settings, generate
    from intraq.teacher.models import build_model

    data = build_data(DataConfig("digits"))
    torch.manual_seed(0)
    teacher = build_model("digits_cnn", 10).eval().to(device)
    cfg = RunConfig(synth=SynthConfig(num_images=96, batch_size=32, iterations=iterations), seed=3)
    with tempfile.TemporaryDirectory() as work:
        ctx = SynthContext(cfg=cfg, teacher=copy.deepcopy(teacher), data=data, device=device, work_dir=Path(work),
                           progress=False)
        ref = generate(ctx, "intraq")
    out: dict[str, Any] = {"iterations": iterations}
    modes = ["none", "cudagraph"] if device.type == "cuda" else ["none"]
    for mode in modes:
        ((images, labels, records),) = generate_stacked(
            copy.deepcopy(teacher), effective_synth_settings(cfg, "digits"), [3], 96, (3, 16, 16), 10, device,
            FastSettings(capture=mode))
        gaps = [abs(f["final_total"] - r["final_total"]) / abs(r["final_total"])
                for f, r in zip(records, ref.meta["batches"], strict=True)]
        out[mode] = {"labels_equal": bool(torch.equal(labels, ref.labels)), "max_rel_loss_gap": max(gaps),
                     "mean_abs_image_gap": float((images - ref.images).abs().mean()),
                     "lor_iterations_equal": [f["lor_iterations"] for f in records]
                     == [r["lor_iterations"] for r in ref.meta["batches"]]}
    return out


def check_calibration(device: torch.device, steps: int) -> dict[str, Any]:
    """Stage 2's official calibration (a GDFQ generator's Adam step + the student's forward at batch 16) on the
    fast path, each capture mode, against the reference `calibrate`: the activation ranges after two epochs."""
    from intraq.fast.calibration import FastCalibration
    from intraq.finetune.trainer import calibrate
    from intraq.synthesis.gdfq import GdfqCalibrationSource

    teacher, cfg = random_teacher(device), FinetuneConfig()
    student = quantize(teacher).to(device)

    def source() -> GdfqCalibrationSource:
        return GdfqCalibrationSource(copy.deepcopy(teacher), 10, 32, cfg.gdfq_latent_dim, cfg.gdfq_lr,
                                     cfg.calib_batch_size, device, torch.Generator().manual_seed(3),
                                     conditional_bn=False)  # CIFAR's generator (label embedding), as official

    def ranges(model: torch.nn.Module) -> torch.Tensor:
        from intraq.quantize import act_quantizers

        return torch.stack([torch.stack([q.x_min, q.x_max]) for q in act_quantizers(model)]).double()

    ref_student, ref_source = copy.deepcopy(student), source()
    tic = time.perf_counter()
    for _ in range(2):
        calibrate(ref_student, ref_source, steps // 2)
    out: dict[str, Any] = {"steps": 2 * (steps // 2), "reference_s": time.perf_counter() - tic}
    ref = ranges(ref_student)
    for mode in ["none", "cudagraph"] if device.type == "cuda" else ["none"]:
        fast_student, tic = copy.deepcopy(student), time.perf_counter()
        try:
            fast = FastCalibration(fast_student, source(), device, mode)
            for _ in range(2):
                fast.epoch(steps // 2)
        except Exception as exc:  # one capture mode failing must not hide the others
            out[mode] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        gap = ((ranges(fast_student) - ref).abs() / ref.abs().clamp_min(1e-6)).max()
        out[mode] = {"seconds": time.perf_counter() - tic, "max_rel_range_gap": float(gap)}
    return out


def verdicts(report: dict[str, Any], loose: bool) -> dict[str, bool]:
    """Pass/fail per check: losses within 1e-3 relative (1e-2 with TF32), accuracies within 1 point (3 with TF32)
    or two test images, whichever is more (4-bit students turn float reordering into the odd flipped image)."""
    loss_tol, acc_tol = (1e-2, 3.0) if loose else (1e-3, 1.0)
    acc_tol = max(acc_tol, 2 * 100.0 / report.get("test_images", 1000))
    out = {}
    for key in ("finetune", "finetune_compile"):
        for mode, r in report.get(key, {}).items():
            if isinstance(r, dict) and "max_rel_loss_gap" in r:
                out[f"finetune-{mode}"] = r["max_rel_loss_gap"] <= loss_tol and r["max_acc_gap_points"] <= acc_tol
            elif isinstance(r, dict) and "error" in r and mode != "error":
                out[f"finetune-{mode}"] = False
    if "runs" in report.get("stacked", {}):
        out["stacked"] = all(r["max_rel_loss_gap"] <= loss_tol and r["max_acc_gap_points"] <= acc_tol
                             for r in report["stacked"]["runs"])
    for mode, r in report.get("calibration", {}).items():
        if isinstance(r, dict) and "max_rel_range_gap" in r:  # ranges: EMAs of batch extremes of a trained generator
            out[f"calibration-{mode}"] = r["max_rel_range_gap"] <= 10 * loss_tol
        elif isinstance(r, dict) and "error" in r:
            out[f"calibration-{mode}"] = False
    if "generation" in report:
        for mode, r in report["generation"].items():
            if isinstance(r, dict) and "labels_equal" in r:
                out[f"generation-{mode}"] = (r["labels_equal"] and r["lor_iterations_equal"]
                                             and r["max_rel_loss_gap"] <= 10 * loss_tol)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300, help="KD steps of the fine-tuning check")
    parser.add_argument("--iterations", type=int, default=200, help="iterations per batch of the generation check")
    parser.add_argument("--calibration-steps", type=int, default=100, help="steps of the calibration check")
    parser.add_argument("--only", default="finetune,generation,stacked,calibration,finetune_compile")
    parser.add_argument("--small", action="store_true", help="64 training and 64 test images (a CPU dry run)")
    parser.add_argument("--strict", action="store_true",
                        help="TF32 off for both paths, so the CPU tests' tolerances apply: a sharper test of the "
                             "algorithm (at 100 steps on an H200 with TF32 on, the KD losses differed by 1.5%%, "
                             "over the loose 1%% tolerance, cause not yet separated)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    numeric = NumericSettings(allow_tf32_matmul=False, allow_tf32_cudnn=False) if args.strict else NumericSettings()
    numeric.apply()
    report: dict[str, Any] = {"device": str(device), "numeric": current_numeric_settings(),
                              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    modes = ["none", "cudagraph"] if device.type == "cuda" else ["none"]
    sizes = (64, 64) if args.small else (512, 1000)
    report["test_images"] = sizes[1]
    checks = {"finetune": lambda: check_finetune(device, args.steps, modes, *sizes),
              "generation": lambda: check_generation(device, args.iterations),
              "stacked": lambda: check_stacked(device, args.steps, sizes[0] // 2 if args.small else 256, sizes[1]),
              "calibration": lambda: check_calibration(device, args.calibration_steps),
              # last: compilation can take a minute; the checks above are written before it starts
              "finetune_compile": lambda: check_finetune(device, args.steps, ["compile"], *sizes)}
    loose = device.type == "cuda" and numeric.allow_tf32_cudnn
    for name in args.only.split(","):
        tic = time.perf_counter()
        try:
            report[name] = checks[name]()
        except Exception as exc:  # keep going: the other checks' results are still worth having
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report.setdefault("seconds", {})[name] = time.perf_counter() - tic
        report["verdicts"] = verdicts(report, loose)
        args.out.write_text(json.dumps(report, indent=2, default=lambda o: None if isinstance(o, float)
                                       and math.isnan(o) else str(o)))
        print(f"{name}: {report['verdicts']}", flush=True)
    failed = [k for k, v in report["verdicts"].items() if not v] + [k for k in checks if "error" in report.get(k, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
