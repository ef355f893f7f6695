"""Qimera (methods §4): a generator with superposed embeddings trained together with the student (its own loop)."""

from __future__ import annotations

import time

from intraq.methods.base import Method, MethodContext, MethodOutcome, register


class QimeraMethod(Method):
    sections = ("qimera",)

    def __init__(self) -> None:
        self.name, self.summary = "qimera", "Qimera: generator and student trained jointly (no stored image set)"

    def run(self, ctx: MethodContext) -> MethodOutcome:
        from intraq.baselines.qimera import run_qimera
        from intraq.quantize import describe_quantization, quantize_model

        cfg, teacher = ctx.cfg, ctx.teacher
        student = quantize_model(teacher.model, cfg.quant).to(ctx.device).requires_grad_(True)
        tic = time.perf_counter()
        out = run_qimera(
            teacher.model, student, ctx.data, cfg, ctx.device, ctx.test_accuracy, progress=ctx.progress,
            checkpoint_path=ctx.run_dir / "finetune.pt",  # removed by the pipeline once the record is written
        )
        seconds = {"qimera_total": time.perf_counter() - tic}
        return MethodOutcome(
            after_calibration=out["acc_after_calibration"], final_epoch=out["acc_final"], best_epoch=out["acc_best"],
            best_epoch_index=out["best_epoch"], diverged_at_epoch=out.get("diverged_at_epoch"),
            exploded_at_epoch=out.get("exploded_at_epoch"), seconds=seconds, history=out.get("history", []),
            extras={"quantization": describe_quantization(student), "qimera_sittings": out.get("sittings", [])},
        )


register(QimeraMethod())
