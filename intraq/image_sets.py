"""A case's image set (synthetic or real), named by the hash of what decides it, and stage 2's calibration source.

Shared by every method that fine-tunes on an image set (`intraq.methods.finetuned`), by `intraq generate` and by
the report's figure data.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from intraq.config import RunConfig, config_hash, to_dict
from intraq.data import DataSplits
from intraq.errors import UserInputError
from intraq.finetune.trainer import CalibrationSource, ImageSetCalibration, calibrate
from intraq.methods import METHODS, get_method
from intraq.methods.finetuned import ImageSetMethod
from intraq.quantize import quantize_model
from intraq.synthesis.base import SynthContext, SyntheticSet
from intraq.teacher.load import Teacher

if TYPE_CHECKING:
    from intraq.fast.settings import FastSettings
    from intraq.pipeline import RunPaths


def image_set_method(name: str) -> ImageSetMethod:
    """The registered method `name`, which must make an image set."""
    method = get_method(name)
    if not isinstance(method, ImageSetMethod):
        known = ", ".join(n for n in METHODS.names() if METHODS.get(n).makes_images)
        raise UserInputError(f"method {name!r} makes no image set; methods that do: {known}")
    return method


def synthetic_set_hash(cfg: RunConfig, teacher_id: str | None = None) -> str:
    """What decides a synthetic set: data, teacher (config and weights), synthesis settings, seed, and what the
    method adds (the student's quantization for ADI, the generator settings for GDFQ)."""
    parts = {
        "data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher), "teacher_id": teacher_id,
        "synth": to_dict(cfg.synth), "seed": cfg.seed,
    }
    method = get_method(cfg.synth.method)
    if isinstance(method, ImageSetMethod):
        parts.update(method.set_hash_parts(cfg))
    return config_hash(parts)


def teacher_identity(info: dict[str, Any]) -> str | None:
    """What identifies the teacher's weights: the checkpoint's sha256, else the pretrained weights' name."""
    return info.get("sha256") or info.get("weights") or info.get("pytorchcv_model")


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
    if images is None:
        raise ValueError("calib_source=train needs the image set")
    return ImageSetCalibration(images, ft.calib_batch_size, generator, device)


def calibrated_student(cfg: RunConfig, teacher: nn.Module, data: DataSplits, device: torch.device) -> nn.Module:
    """The quantized network before fine-tuning, ranges calibrated as stage 2 does: ADI's competitor."""
    student = quantize_model(teacher, cfg.quant).to(device)
    source = make_calibration_source(cfg, teacher, data, None, device)
    calibrate(student, source, cfg.finetune.calib_epochs * cfg.finetune.iters_per_epoch)
    return student.eval().requires_grad_(False)


def get_image_set(
    cfg: RunConfig, teacher: Teacher, data: DataSplits, device: torch.device, paths: RunPaths, progress: bool,
    compile: bool = False,
    fast: FastSettings | None = None,
) -> tuple[SyntheticSet, float]:
    """The case's image set from its hash-named file, or made (and saved) now; returns it with its seconds.

    `compile` runs the generation loss under torch.compile (same numbers within float noise; ~1.4x faster on
    this 2-core CPU for ResNet-20 after a ~30 s compile, so worth it for long runs only); `fast` makes the missing
    batches on the fast path where the method has one (same files, same draws)."""
    method = image_set_method(cfg.synth.method)
    set_name = f"{cfg.synth.method}-{synthetic_set_hash(cfg, teacher_identity(teacher.info))}.pt"
    path = paths.artifacts / "sets" / set_name
    if path.exists():
        image_set = SyntheticSet.load(path)
        return image_set, float(image_set.meta.get("wall_seconds", 0.0))
    tic = time.perf_counter()
    if fast is not None and not method.fast_images:
        import sys

        from tqdm import tqdm

        tqdm.write(f"fast path: method {method.name!r} has no fast image generation; its images are made on the "
                   "reference path", file=sys.stderr)
    student = method.make_student(cfg, teacher, data, device)
    torch.manual_seed(cfg.seed)
    ctx = SynthContext(
        cfg=cfg, teacher=teacher.model, data=data, device=device, work_dir=paths.artifacts / "synthesis",
        student=student, progress=progress, compile=compile, fast=fast,
    )
    image_set = method.synthesize(ctx)
    # Methods that keep their own per-batch files (cache_dir) rebuild the set from them in seconds and report
    # the compute time of every batch, reused or not; storing the assembled set again would double the disk.
    seconds = float(image_set.meta.get("generation_seconds", time.perf_counter() - tic))
    image_set.meta.setdefault("wall_seconds", seconds)
    if "cache_dir" not in image_set.meta:
        image_set.save(path)
    return image_set, seconds
