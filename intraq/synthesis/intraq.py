"""IntraQ stage 1 as the official code does it (methods §2.1, §2.3), and the ADI variant (§3.5).

Per batch: x ~ N(0, 1) in normalized space, uniform random labels, Adam(lr 0.5) on x only, ReduceLROnPlateau
stepped every iteration, `iterations` steps of BNS + target loss (SIL or CE) + MDC hinges (IntraQ) or the ADI
competition term (ADI), with LOR applied to the whole batch on a per-iteration coin flip.

Unlike the official groups-of-5-batches runs, one call makes all `num_images` in batches of `batch_size`
(the last one may be partial). Batch k draws all its randomness from a generator seeded by (seed, k) and is
saved as its own file, in a folder named by the hash of everything but `num_images`. A later call with a
larger `num_images` therefore reuses the first batches unchanged, and an interrupted run resumes; MDC
centres are rebuilt from the reused images in generation order, exactly as one long run builds them, and
never from other runs' files (trap T6).
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from intraq.config import LOCATION_FIELDS, config_hash, to_dict
from intraq.errors import UserInputError
from intraq.results import sitting
from intraq.synthesis.base import SYNTHESIZERS, SynthContext, SyntheticSet
from intraq.synthesis.batches import batch_seed, frozen, state_fingerprint
from intraq.synthesis.bn_stats import BNStatsLoss
from intraq.synthesis.centers import ClassCenters
from intraq.synthesis.driver import BatchCheckpoint, run_batches, run_iterations
from intraq.synthesis.lor import LORSettings, apply_affine, sample_lor_schedule
from intraq.synthesis.losses import adi_competition_loss, draw_sil_targets, mdc_loss, target_loss
from intraq.synthesis.plateau import DevicePlateau
from intraq.synthesis.settings import (  # noqa: F401  (importable from here as before)
    METHODS,
    OFFICIAL_SCRIPT_SETTINGS,
    SynthSettings,
    effective_synth_settings,
)
from intraq.teacher.features import tap_features

# Part of the folder name of every set that uses LOR: raised when the algorithm changes the images while the
# settings (and so the cache key) stay the same, so that a set made by older code is never reused. v2: LOR's
# crops clamped to their box (commit 24cb9ed); folders without a version hold sets made before it (or without
# LOR, whose images the fix did not change).
SET_VERSION = "v2"


def set_folder(work_dir: Path, method: str, key: str, lor: str) -> Path:
    """`<work_dir>/<method>-<SET_VERSION>-<key>` (`<method>-<key>` without LOR): one synthetic set's batches."""
    return Path(work_dir) / (f"{method}-{key}" if lor == "none" else f"{method}-{SET_VERSION}-{key}")


def cache_key(ctx: SynthContext, method: str, settings: SynthSettings) -> str:
    """Hash of everything that decides the images except num_images (and except file locations)."""
    cfg = ctx.cfg
    key: dict[str, Any] = {
        "method": method,
        "seed": cfg.seed,
        "data": to_dict(cfg.data),
        "teacher": to_dict(cfg.teacher),
        "synth": to_dict(cfg.synth),
        "effective": settings.to_dict(),
        "image_size": ctx.data.image_size,
        "num_classes": ctx.data.num_classes,
        "teacher_state": state_fingerprint(ctx.teacher),
    }
    if method == "adi":
        assert ctx.student is not None
        key["quant"] = to_dict(cfg.quant)
        key["student_state"] = state_fingerprint(ctx.student)
    return config_hash(key, exclude=LOCATION_FIELDS | {"synth.num_images"})


def _optimize_batch(
    ctx: SynthContext,
    settings: SynthSettings,
    index: int,
    size: int,
    centers: ClassCenters | None,
    checkpoint: BatchCheckpoint,
    progress: tqdm,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Optimize one batch from noise (or from its checkpoint); returns CPU float32 images, int64 labels and a
    record of the run."""
    start = time.perf_counter()
    device, teacher, data = ctx.device, ctx.teacher, ctx.data
    side = data.image_size
    generator = torch.Generator().manual_seed(batch_seed(ctx.cfg.seed, index))

    # All randomness of the batch, drawn on the CPU generator up front (device-independent, hoisted).
    x0 = torch.randn(size, data.channels, side, side, generator=generator)
    labels = torch.randint(0, data.num_classes, (size,), generator=generator)
    targets = draw_sil_targets(size, settings.target_pro, generator)
    lor = LORSettings.from_variant(settings.lor, settings.aug_margin, settings.rotation_degrees)
    coins, thetas = sample_lor_schedule(
        settings.iterations, size, side, side, lor, settings.lor_prob, generator
    )
    zero_outside = "rotate" in lor.ops

    memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
    x = x0.to(device).contiguous(memory_format=memory_format).requires_grad_(True)
    labels_d, targets_d, thetas_d = labels.to(device), targets.to(device), thetas.to(device)
    centers_d, mask_d = (None, None)
    if settings.mdc and centers is not None:
        c, m = centers.lookup(labels)
        if c is not None and bool(m.any()):
            centers_d, mask_d = c.to(device), m.to(device)
    use_mdc = centers_d is not None
    student = ctx.student if settings.method == "adi" else None

    # A tensor lr needs Adam's capturable path on CUDA; the device-side plateau avoids a host sync per step.
    optimizer = torch.optim.Adam(
        [x], lr=torch.tensor(float(settings.lr), device=device), capturable=device.type == "cuda"
    )
    scheduler = DevicePlateau(
        optimizer, factor=0.1, patience=settings.plateau_patience, min_lr=settings.min_lr
    )
    zero = torch.zeros((), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.bf16_autocast)
    tap_cm = tap_features(teacher) if use_mdc else nullcontext(None)
    with BNStatsLoss(teacher) as bns, tap_cm as tap:

        def loss_terms(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            """All loss terms of one iteration; one unit, so torch.compile can fuse it whole."""
            with autocast:
                logits = teacher(inputs).float()
            terms = {"bns": bns.loss(), "target": target_loss(settings.target_loss, logits, labels_d, targets_d)}
            if use_mdc:
                terms["mdc_lower"], terms["mdc_upper"] = mdc_loss(
                    tap.features.float(), centers_d, mask_d, settings.margin_low, settings.margin_up
                )
            elif settings.mdc:
                terms["mdc_lower"] = terms["mdc_upper"] = zero
            if student is not None:
                terms["adi"] = adi_competition_loss(
                    student(inputs), logits, settings.adi_temperature, settings.adi_scale
                )
            return terms

        compute_terms = torch.compile(loss_terms) if ctx.compile else loss_terms
        last: dict[str, dict[str, torch.Tensor]] = {"terms": {}}

        def compute(it: int) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            inputs = apply_affine(x, thetas_d[it], zero_outside) if coins[it] else x
            last["terms"] = compute_terms(inputs.contiguous(memory_format=memory_format))
            total = sum(last["terms"].values())
            total.backward()
            return total

        def update(it: int, total: torch.Tensor) -> None:
            optimizer.step()
            scheduler.step(total)  # on device: no host sync inside the loop (T8 schedule unchanged)

        def snapshot(done: int) -> dict[str, Any]:
            return {"iteration": done, "x": x.detach(), "adam": optimizer.state[x], "plateau": scheduler.state_dict()}

        state = checkpoint.load()
        if state is not None:
            with torch.no_grad():
                x.copy_(state["x"])
            optimizer.state[x] = {k: v.to(device) for k, v in state["adam"].items()}
            scheduler.load_state_dict(state["plateau"])
        start_it = 0 if state is None else state["iteration"]
        run_iterations(start_it, settings.iterations, compute, update, snapshot, checkpoint, progress)
        terms = last["terms"]
    with torch.no_grad():
        teacher_acc = (teacher(x).argmax(1) == labels_d).float().mean()
    record: dict[str, Any] = {
        "batch": index,
        "size": size,
        "seed": batch_seed(ctx.cfg.seed, index),
        "final_losses": {k: float(v.detach()) for k, v in terms.items()},
        "final_total": float(sum(terms.values()).detach()),
        "final_lr": scheduler.current_lr(),
        "teacher_acc": float(teacher_acc),
        "mdc_images": int(mask_d.sum()) if use_mdc else 0,
        "center_checksum": float((centers_d * mask_d.unsqueeze(1)).double().sum()) if use_mdc else 0.0,
        "lor_iterations": int(sum(coins)),
        "seconds": time.perf_counter() - start,
        "device": str(device),
        "ran_on": sitting(device),  # which machine, torch and commit made this batch (runs may span sittings)
    }
    return x.detach().float().cpu(), labels, record


def _fast_batch_maker(ctx: SynthContext, method: str, settings: SynthSettings):  # -> FastBatchMaker | None
    """The fast path's batch maker when `ctx.fast` asks for it and it covers this method; else None (said so)."""
    if ctx.fast is None:
        return None
    if method != "intraq" or ctx.bf16_autocast:
        why = f"method {method!r}" if method != "intraq" else "bf16 autocast"
        tqdm.write(f"fast path: {why} has no fast image generation; stage 1 runs on the reference path",
                   file=sys.stderr)
        return None
    from intraq.fast.synthesis import FastBatchMaker

    if ctx.compile:
        tqdm.write("fast path: --compile does not apply to its image generation (choose its capture with --fast "
                   "CAPTURE, e.g. --fast compile)", file=sys.stderr)
    data = ctx.data
    return FastBatchMaker(ctx.teacher, settings, ctx.cfg.seed, (data.channels, data.image_size, data.image_size),
                          data.num_classes, ctx.device, ctx.fast)


def generate(ctx: SynthContext, method: str | None = None) -> SyntheticSet:
    """Make (or extend, or resume) the IntraQ / ADI synthetic set of `ctx.cfg.synth.num_images` images."""
    wall_start = time.perf_counter()
    cfg, s = ctx.cfg, ctx.cfg.synth
    method = method or s.method
    settings = effective_synth_settings(cfg, ctx.data.name, method)
    if s.num_images <= 0 or s.batch_size <= 0 or s.iterations <= 0:
        raise UserInputError("synth.num_images, synth.batch_size and synth.iterations must be positive")
    if method == "adi":
        if ctx.student is None:
            raise UserInputError(
                "synth.method=adi needs a student network (SynthContext.student): the pipeline passes the "
                "quantized network before fine-tuning; got None"
            )
        shared = {id(m) for m in ctx.teacher.modules()} & {id(m) for m in ctx.student.modules()}
        if shared:
            raise ValueError("the ADI student shares modules with the teacher; pass a separate copy")
    key = cache_key(ctx, method, settings)
    folder = set_folder(ctx.work_dir, method, key, settings.lor)
    centers = ClassCenters(ctx.data.num_classes) if settings.mdc else None
    if ctx.channels_last:  # weights in NHWC too, so oneDNN/cuDNN pick their channels-last kernels
        ctx.teacher.to(memory_format=torch.channels_last)
        if ctx.student is not None:
            ctx.student.to(memory_format=torch.channels_last)
    maker = _fast_batch_maker(ctx, method, settings)
    if maker is None:
        def make(k: int, size: int, checkpoint: BatchCheckpoint, bar: tqdm) -> tuple:
            return _optimize_batch(ctx, settings, k, size, centers, checkpoint, bar)
    else:
        def make(k: int, size: int, checkpoint: BatchCheckpoint, bar: tqdm) -> tuple:
            if checkpoint.path.exists():  # the fast path cannot continue it, and must not throw it away
                raise UserInputError(
                    f"{checkpoint.path} holds batch {k} of this set interrupted on the reference path, which the "
                    "fast path cannot continue: run without --fast to finish it, or delete that file to redo the "
                    "batch on the fast path")
            return maker(k, size, centers, bar.update)
    try:
        with frozen(ctx.teacher), frozen(ctx.student if method == "adi" else None):
            batches = run_batches(
                folder, s.num_images, s.batch_size, (ctx.data.channels, ctx.data.image_size), make,
                s.iterations, f"{method} synthesis" + (" (fast)" if maker else ""), ctx.progress,
                before_next=None if centers is None
                else lambda x, y: centers.add_images(ctx.teacher, x.to(ctx.device), y),
            )
    finally:
        if maker is not None:
            maker.close()
    records = batches.records
    meta: dict[str, Any] = {
        **batches.meta(),
        "method": method,
        "config_hash": key,
        "seed": cfg.seed,
        "effective": settings.to_dict(),
        "lor_ops": list(settings.lor_ops),
        "rotation_degrees": settings.rotation_degrees,
        "batch_losses": [dict(r["final_losses"], total=r["final_total"]) for r in records],
        "wall_time_s": time.perf_counter() - wall_start,
        "device": str(ctx.device),
        # reused batches included: a set resumed across machines or paths says how many each path made
        "batches_by_path": {
            "fast": sum(1 for r in records if "fast" in r), "reference": sum(1 for r in records if "fast" not in r)},
    }
    if method == "adi":
        meta["adi_student"] = s.adi_student
    return SyntheticSet(images=torch.cat(batches.images), labels=torch.cat(batches.labels).long(), meta=meta)


@SYNTHESIZERS.register("intraq")
def generate_intraq(ctx: SynthContext) -> SyntheticSet:
    """IntraQ stage 1: BNS + SIL (or CE) + MDC, with LOR."""
    return generate(ctx, "intraq")


@SYNTHESIZERS.register("adi")
def generate_adi(ctx: SynthContext) -> SyntheticSet:
    """IntraQ stage 1 with MDC replaced by ADI's competition term (methods §3.5).

    Student choice (recorded as meta["adi_student"]): whatever network the pipeline passes in
    `ctx.student` (by default the quantized network before fine-tuning, the zero-shot-quantization analogue of
    ADI's student); its parameters are frozen and it is in eval mode, but the gradient flows through it into
    the images (DeepInversion's detach_student=False).
    """
    return generate(ctx, "adi")
