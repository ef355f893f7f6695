"""The methods that make an image set and fine-tune the quantized student on it with KD (IntraQ stage 2).

One class for all of them: the image source is the only difference (`synthesize`), plus, for some, what else
decides the set (`set_hash_parts`) and a student the synthesis competes with (`make_student`, ADI).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from intraq.methods.base import Method, MethodContext, MethodOutcome

if TYPE_CHECKING:
    import torch
    from torch import nn

    from intraq.config import RunConfig
    from intraq.data.base import DataSplits
    from intraq.fast.finetune import FinetuneRun
    from intraq.fast.settings import FastSettings
    from intraq.synthesis.base import SynthContext, SyntheticSet
    from intraq.teacher.load import Teacher


class ImageSetMethod(Method):
    """Image set (made once per seed, hash-named) -> quantize -> calibrate activation ranges -> KD fine-tuning."""

    sections = ("synth", "finetune")
    makes_images = True
    fast_path = True  # stage 2 (KD fine-tuning); image generation where `fast_images`

    def __init__(self, name: str, summary: str, synthesize: Callable[[SynthContext], SyntheticSet],
                 fast_images: bool = False) -> None:
        """`fast_images`: its synthesizer honours `SynthContext.fast` (and says itself when it cannot)."""
        self.name, self.summary, self._synthesize, self.fast_images = name, summary, synthesize, fast_images

    def synthesize(self, ctx: SynthContext) -> SyntheticSet:
        return self._synthesize(ctx)

    def set_hash_parts(self, cfg: RunConfig) -> dict[str, Any]:
        """What decides the image set besides data, teacher, synth settings and seed (part of its file name)."""
        return {}

    def make_student(
        self, cfg: RunConfig, teacher: Teacher, data: DataSplits, device: torch.device
    ) -> nn.Module | None:
        """A network the synthesis needs besides the teacher (`SynthContext.student`); most need none."""
        return None

    def run(self, ctx: MethodContext) -> MethodOutcome:
        from intraq.finetune.augment import make_finetune_augment
        from intraq.finetune.trainer import finetune

        job = self.prepare_stage2(ctx)
        if job.fast is None:
            run = job.run
            result = finetune(
                run.student, ctx.teacher.model, run.images, run.labels, ctx.test_accuracy, run.calibration,
                make_finetune_augment(ctx.cfg.finetune), ctx.cfg.finetune, ctx.device, ctx.cfg.seed,
                checkpoint_path=ctx.run_dir / REFERENCE_CHECKPOINT, progress=ctx.progress,
            )
        else:
            from intraq.fast.finetune import finetune_fast

            test_x, test_y = ctx.data.test.batch(slice(None))
            (result,) = finetune_fast([job.run], ctx.teacher.model, test_x, test_y, ctx.device, job.fast,
                                      ctx.progress, checkpoint_path=ctx.run_dir / FAST_CHECKPOINT)
        return self.stage2_outcome(job, result)

    def prepare_stage2(self, ctx: MethodContext) -> Stage2Job:
        """Everything before stage 2: the image set (made or reused), the quantized student, its calibration
        source. Stage 2 itself may then run alone (`run`) or stacked with other cases' (`intraq.stacking`)."""
        from intraq.fast.finetune import FinetuneRun
        from intraq.image_sets import get_image_set, make_calibration_source
        from intraq.quantize import quantize_model

        cfg, teacher = ctx.cfg, ctx.teacher
        fast = stage2_fast_settings(ctx)
        check_checkpoints(ctx.run_dir, fast is not None)  # before any work: a refused run wastes none
        image_set, generation_seconds = get_image_set(
            cfg, teacher, ctx.data, ctx.device, ctx.paths, ctx.progress, ctx.compile, ctx.fast
        )
        images = image_set.images
        student = quantize_model(teacher.model, cfg.quant).to(ctx.device)
        source = make_calibration_source(cfg, teacher.model, ctx.data, images, ctx.device)
        run = FinetuneRun(student, images, image_set.labels, source, cfg.seed, cfg.finetune)
        return Stage2Job(image_set.meta, generation_seconds, run, fast)

    @staticmethod
    def stage2_outcome(job: Stage2Job, result: Any) -> MethodOutcome:
        """The case's outcome from its stage-2 result (the reference's `FinetuneResult` or a fast one)."""
        from intraq.quantize import describe_quantization

        fast = job.fast
        meta = {k: v for k, v in job.image_meta.items() if not _is_tensor(v)}
        return MethodOutcome(
            after_calibration=result.acc_after_calibration, final_epoch=result.acc_final, best_epoch=result.acc_best,
            best_epoch_index=result.best_epoch, diverged_at_epoch=result.diverged_at_epoch,
            exploded_at_epoch=result.exploded_at_epoch,
            seconds={"generation": job.generation_seconds, **result.seconds}, history=result.history,
            extras={
                "synthesis": meta, "quantization": describe_quantization(job.run.student),
                "finetune_sittings": result.sittings,
                **({"stage2_sharpness": result.sharpness} if result.sharpness else {}),
                "finetune_path": "reference" if fast is None else {"fast": result.fast},
            },
        )


@dataclass
class Stage2Job:
    """One case ready for stage 2: its image set's record fields, generation seconds, the stage-2 run (student,
    images, calibration source, seed, config) and the fast settings it runs on (None: the reference trainer)."""

    image_meta: dict[str, Any]
    generation_seconds: float
    run: FinetuneRun
    fast: FastSettings | None


REFERENCE_CHECKPOINT, FAST_CHECKPOINT = "finetune.pt", "finetune-fast.pt"  # in the case's run folder
FAST_TEST_SET_BYTES = 8 * 2**30  # the fast stage 2 keeps the test set on the device as float32


def stage2_fast_settings(ctx: MethodContext):  # -> FastSettings | None
    """The fast settings for stage 2, or None for the reference trainer (said so when fast was asked for)."""
    from tqdm import tqdm

    from intraq.data.base import TensorImageDataset

    if ctx.fast is None:
        return None
    test = ctx.data.test
    why = None
    if not isinstance(test, TensorImageDataset):
        why = f"the test split of {ctx.data.name} is not held in memory"
    elif test.images.numel() * 4 > FAST_TEST_SET_BYTES:
        why = f"the test split of {ctx.data.name} would take {test.images.numel() * 4 / 2**30:.1f} GiB on the device"
    if why is not None:
        tqdm.write(f"fast path: {why}; stage 2 runs on the reference path", file=sys.stderr)
        return None
    return ctx.fast


def check_checkpoints(run_dir: Path, fast: bool) -> None:
    """Refuse to start stage 2 on one path while a checkpoint of the other waits in the run folder: the two
    cannot continue each other, and restarting would silently throw the finished epochs away."""
    from intraq.errors import UserInputError

    other = run_dir / (REFERENCE_CHECKPOINT if fast else FAST_CHECKPOINT)
    if other.exists():
        was, now = ("the reference path", "--fast") if fast else ("the fast path (--fast)", "the reference path")
        raise UserInputError(
            f"{other} holds stage 2 of this case interrupted on {was}, which {now} cannot continue: run the same "
            f"command as before to resume it, or delete that file to start stage 2 again on {now}")


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
