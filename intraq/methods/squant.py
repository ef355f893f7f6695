"""SQuant (methods §5): data-free post-training quantization; no fine-tuning, one evaluation."""

from __future__ import annotations

import time

from intraq.methods.base import Method, MethodContext, MethodOutcome, register


class SquantMethod(Method):
    sections = ("squant",)

    def __init__(self) -> None:
        self.name, self.summary = "squant", "SQuant: data-free post-training quantization (no fine-tuning)"

    def run(self, ctx: MethodContext) -> MethodOutcome:
        from intraq.baselines.squant import squant_quantize

        cfg = ctx.cfg
        tic = time.perf_counter()
        student, stats = squant_quantize(
            ctx.teacher.model, cfg.quant, cfg.squant, ctx.data.image_size, cfg.seed, ctx.data.channels
        )
        seconds = {"quantization": time.perf_counter() - tic}
        tic = time.perf_counter()
        acc = ctx.test_accuracy(student.to(ctx.device))
        seconds["evaluation"] = time.perf_counter() - tic
        return MethodOutcome(
            after_calibration=acc, final_epoch=acc, best_epoch=acc, best_epoch_index=None, seconds=seconds,
            extras={"squant": stats, "note": "post-training quantization: no fine-tuning, one evaluation"},
        )


register(SquantMethod())
