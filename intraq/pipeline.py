"""One benchmark case end to end: data -> teacher -> images -> quantize -> calibrate + fine-tune -> evaluate.

Artifacts (synthetic sets, fine-tuning checkpoints, results) are named by the hash of the config that made
them and written atomically, so a re-run reuses what exists and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import intraq
from intraq.artifacts import artifacts_root
from intraq.config import RunConfig, config_hash, to_dict
from intraq.data import DataSplits, build_data
from intraq.device import pick_device
from intraq.errors import UserInputError
from intraq.evaluate import evaluate
from intraq.finetune.augment import make_finetune_augment
from intraq.finetune.trainer import CalibrationSource, ImageSetCalibration, calibrate, finetune
from intraq.quantize import describe_quantization, quantize_model
from intraq.results import git_commit, machine_info, now_utc, read_result, result_path, write_result
from intraq.synthesis.base import SYNTHESIZERS, SynthContext, SyntheticSet
from intraq.teacher.load import Teacher, get_teacher

PTQ_METHODS = {"squant"}
JOINT_METHODS = {"qimera"}  # generator and student trained together: their own loop


@dataclass
class RunPaths:
    artifacts: Path
    results: Path

    @classmethod
    def default(cls, artifacts: str | Path | None = None, results: str | Path = "results") -> RunPaths:
        return cls(artifacts=artifacts_root(artifacts), results=Path(results))


def relevant_config(cfg: RunConfig) -> dict[str, Any]:
    """The sections that decide a case's numbers for its method (others are left out of its hash)."""
    full = to_dict(cfg)
    keep = {"profile": full["profile"], "data": full["data"], "teacher": full["teacher"], "quant": full["quant"]}
    method = cfg.synth.method
    if method in PTQ_METHODS:
        keep["squant"] = full["squant"]
    elif method in JOINT_METHODS:
        keep["qimera"] = full["qimera"]
    else:
        keep["synth"] = full["synth"]
        keep["finetune"] = full["finetune"]
    return keep


def case_hash(cfg: RunConfig) -> str:
    """The name of a case: hash of its relevant config, without the seed (seeds are runs of one case)."""
    return config_hash(relevant_config(cfg))


def synthetic_set_hash(cfg: RunConfig, teacher_id: str | None = None) -> str:
    """What decides a synthetic set: data, teacher (config and weights), synthesis settings, seed, and the
    student's quantization for ADI or the generator settings for GDFQ."""
    parts = {
        "data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher), "teacher_id": teacher_id,
        "synth": to_dict(cfg.synth), "seed": cfg.seed,
    }
    if cfg.synth.method == "gdfq":
        parts["gdfq"] = {"lr": cfg.finetune.gdfq_lr, "latent_dim": cfg.finetune.gdfq_latent_dim}
    if cfg.synth.method == "adi":
        parts["quant"] = to_dict(cfg.quant)
        parts["finetune_calibration"] = {
            k: v for k, v in to_dict(cfg.finetune).items() if k.startswith(("calib", "gdfq"))
        }
    return config_hash(parts)


def teacher_identity(info: dict[str, Any]) -> str | None:
    """What identifies the teacher's weights: the checkpoint's sha256, else the pretrained weights' name."""
    return info.get("sha256") or info.get("weights") or info.get("pytorchcv_model")


def _stored_result_is_current(record: dict[str, Any], cfg: RunConfig, paths: RunPaths) -> bool:
    """A stored result is reused only if it was made with the teacher checkpoint that is there now."""
    if cfg.teacher.source != "local":
        return True
    from intraq.teacher.checkpoint import read_sidecar
    from intraq.teacher.load import local_checkpoint_path

    checkpoint = local_checkpoint_path(cfg.teacher, cfg.data.name, paths.artifacts)
    if not checkpoint.exists():
        return True  # nothing to compare with; the stored record names its own teacher
    return read_sidecar(checkpoint).get("sha256") == record.get("teacher", {}).get("sha256")


def make_calibration_source(
    cfg: RunConfig, teacher: nn.Module, data: DataSplits, images: torch.Tensor | None, device: torch.device
) -> CalibrationSource:
    """Officially a GDFQ generator trained on the fly (T10); `calib_source=train` uses the image set instead."""
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    ft = cfg.finetune
    if ft.calib_source == "gdfq":
        from intraq.synthesis.gdfq import GdfqCalibrationSource

        return GdfqCalibrationSource(
            teacher=teacher, num_classes=data.num_classes, image_size=data.image_size, latent_dim=ft.gdfq_latent_dim,
            lr=ft.gdfq_lr, batch_size=ft.calib_batch_size, device=device, generator=generator,
            channels=data.channels, conditional_bn=data.name == "imagenet",
        )
    if ft.calib_source == "train":
        if images is None:
            raise ValueError("calib_source=train needs the image set")
        return ImageSetCalibration(images, ft.calib_batch_size, generator, device)
    raise ValueError(f"unknown finetune.calib_source {ft.calib_source!r}; known: gdfq, train")


def calibrated_student(cfg: RunConfig, teacher: nn.Module, data: DataSplits, device: torch.device) -> nn.Module:
    """The quantized network before fine-tuning, ranges calibrated as stage 2 does: ADI's competitor."""
    student = quantize_model(teacher, cfg.quant).to(device)
    source = make_calibration_source(cfg, teacher, data, None, device)
    calibrate(student, source, cfg.finetune.calib_epochs * cfg.finetune.iters_per_epoch)
    return student.eval().requires_grad_(False)


def get_image_set(
    cfg: RunConfig, teacher: Teacher, data: DataSplits, device: torch.device, paths: RunPaths, progress: bool,
    compile: bool = False,
) -> tuple[SyntheticSet, float]:
    """The case's image set from its hash-named file, or made (and saved) now; returns it with its seconds.

    `compile` runs the generation loss under torch.compile (same numbers within float noise; ~1.4x faster on
    this 2-core CPU for ResNet-20 after a ~30 s compile, so worth it for long runs only)."""
    set_name = f"{cfg.synth.method}-{synthetic_set_hash(cfg, teacher_identity(teacher.info))}.pt"
    path = paths.artifacts / "sets" / set_name
    if path.exists():
        image_set = SyntheticSet.load(path)
        return image_set, float(image_set.meta.get("wall_seconds", 0.0))
    tic = time.perf_counter()
    synthesizer = SYNTHESIZERS.get(cfg.synth.method)
    student = None
    if cfg.synth.method == "adi":
        if cfg.synth.adi_student == "quantized":
            student = calibrated_student(cfg, teacher.model, data, device)
        elif cfg.synth.adi_student == "teacher-copy":  # a fixed FP network, as the released ADI code uses
            student = copy.deepcopy(teacher.model)
        else:
            known = "quantized, teacher-copy"
            raise UserInputError(f"unknown synth.adi_student {cfg.synth.adi_student!r}; known: {known}")
    torch.manual_seed(cfg.seed)
    ctx = SynthContext(
        cfg=cfg, teacher=teacher.model, data=data, device=device, work_dir=paths.artifacts / "synthesis",
        student=student, progress=progress, compile=compile,
    )
    image_set = synthesizer(ctx)
    # Methods that keep their own per-batch files (cache_dir) rebuild the set from them in seconds and report
    # the compute time of every batch, reused or not; storing the assembled set again would double the disk.
    seconds = float(image_set.meta.get("generation_seconds", time.perf_counter() - tic))
    image_set.meta.setdefault("wall_seconds", seconds)
    if "cache_dir" not in image_set.meta:
        image_set.save(path)
    return image_set, seconds


def _register_methods() -> None:
    """Import the modules whose import registers synthesizers (kept here so the registry has no import cycle)."""
    import intraq.synthesis.deepinversion  # noqa: F401
    import intraq.synthesis.gdfq  # noqa: F401
    import intraq.synthesis.intraq  # noqa: F401
    import intraq.synthesis.real  # noqa: F401


def run_case(
    cfg: RunConfig,
    paths: RunPaths | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    force: bool = False,
    compile: bool = False,
) -> dict[str, Any]:
    """Run one case (or return its stored result). The record holds numbers, config, seed, commit, machine, times."""
    _register_methods()
    paths = paths or RunPaths.default()
    device = device or pick_device()
    name = case_hash(cfg)
    out = result_path(paths.results, cfg.profile, name, cfg.seed)
    if out.exists() and not force:
        record = read_result(out)
        if _stored_result_is_current(record, cfg, paths):
            return record
        warnings.warn(f"{out} was made with another teacher checkpoint; recomputing it", stacklevel=2)
    started, t0 = now_utc(), time.perf_counter()
    seconds: dict[str, float] = {}
    torch.manual_seed(cfg.seed)

    tic = time.perf_counter()
    data = build_data(cfg.data)
    seconds["data"] = time.perf_counter() - tic
    tic = time.perf_counter()
    teacher = get_teacher(cfg.teacher, data, device, paths.artifacts, progress)
    seconds["teacher"] = time.perf_counter() - tic

    def test_accuracy(model: nn.Module) -> float:
        return evaluate(model, data.test, cfg.finetune.eval_batch_size, device)

    method = cfg.synth.method
    extra: dict[str, Any] = {}
    if method in PTQ_METHODS:
        from intraq.baselines.squant import squant_quantize

        tic = time.perf_counter()
        student, stats = squant_quantize(teacher.model, cfg.quant, cfg.squant, data.image_size, cfg.seed)
        seconds["quantization"] = time.perf_counter() - tic
        tic = time.perf_counter()
        acc = test_accuracy(student.to(device))
        seconds["evaluation"] = time.perf_counter() - tic
        accuracy = {"after_calibration": acc, "final_epoch": acc, "best_epoch": acc, "best_epoch_index": None}
        extra = {"squant": stats, "note": "post-training quantization: no fine-tuning, one evaluation"}
    elif method in JOINT_METHODS:
        from intraq.baselines.qimera import run_qimera

        student = quantize_model(teacher.model, cfg.quant).to(device).requires_grad_(True)
        tic = time.perf_counter()
        out_q = run_qimera(teacher.model, student, data, cfg, device, test_accuracy, progress=progress)
        seconds["qimera_total"] = time.perf_counter() - tic
        accuracy = {
            "after_calibration": out_q["acc_after_calibration"], "final_epoch": out_q["acc_final"],
            "best_epoch": out_q["acc_best"], "best_epoch_index": out_q["best_epoch"],
        }
        extra = {"history": out_q.get("history", []), "quantization": describe_quantization(student)}
    else:
        image_set, seconds["generation"] = get_image_set(cfg, teacher, data, device, paths, progress, compile)
        images = image_set.images
        student = quantize_model(teacher.model, cfg.quant).to(device)
        source = make_calibration_source(cfg, teacher.model, data, images, device)
        run_dir = paths.artifacts / "runs" / f"{name}-seed{cfg.seed}"
        result = finetune(
            student, teacher.model, images, image_set.labels, test_accuracy, source,
            make_finetune_augment(cfg.finetune), cfg.finetune, device, cfg.seed,
            checkpoint_path=run_dir / "finetune.pt", progress=progress,
        )
        seconds.update(result.seconds)
        accuracy = {
            "after_calibration": result.acc_after_calibration, "final_epoch": result.acc_final,
            "best_epoch": result.acc_best, "best_epoch_index": result.best_epoch,
            "diverged_at_epoch": result.diverged_at_epoch,
        }
        meta = {k: v for k, v in image_set.meta.items() if not isinstance(v, torch.Tensor)}
        extra = {
            "synthesis": meta, "history": result.history, "quantization": describe_quantization(student),
            "finetune_sittings": result.sittings,
        }
    accuracy["teacher"] = teacher.info["test_top1"]
    seconds["total"] = time.perf_counter() - t0
    record = {
        "case": name,
        "seed": cfg.seed,
        "profile": cfg.profile,
        "method": method,
        "accuracy": accuracy,
        "accuracy_notes": {
            "after_calibration": "quantized network after activation-range calibration only (PTQ starting point)",
            "final_epoch": "after the last fine-tuning epoch",
            "best_epoch": "best test top-1 over evaluated epochs incl. calibration epochs (test-set selection, T12)",
        },
        "teacher": teacher.info,
        "data_identity": data.identity,  # name + content hash: which data the numbers come from
        "config": to_dict(cfg),
        "relevant_config": relevant_config(cfg),
        "seconds": seconds,
        "git_commit": git_commit(),
        "machine": machine_info(device),
        "started": started,
        "finished": now_utc(),
        "intraq_bench_version": intraq.__version__,
        "command": " ".join(sys.argv),
        **extra,
    }
    write_result(record, out)
    checkpoint = paths.artifacts / "runs" / f"{name}-seed{cfg.seed}" / "finetune.pt"
    checkpoint.unlink(missing_ok=True)
    return record


def with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    cfg = copy.deepcopy(cfg)
    cfg.seed = seed
    return cfg
