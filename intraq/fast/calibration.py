"""Stage 2's calibration on the fast path: each calibration step one closure, captured once per run on CUDA.

Why: the reference `calibrate` (`intraq.finetune.trainer`) is launch-bound on a GPU. On an H200 an official
calibration epoch (200 steps at batch 16; with the official GDFQ source each step is a generator forward, a teacher
forward and backward, an Adam step and the student's forward, about 7,000 aten calls) took 10 s: 46 s of an
official run's 388 (`results/diagnostics/device-h200/`), and run by run, so stacking runs does not amortize it.

The same algorithm: the same draws from the source's own RNG in the same order (drawn as the reference draws them,
then copied into the step's static inputs), the same generator update (`GdfqCalibrationSource.update`), the same
student forward with its activation ranges updating. Without capture it equals the reference exactly
(tests/test_fast_calibration.py). Captured, Adam runs in its capturable form (step counts on the device, as CUDA
graphs need), equal up to float rounding; the warm-up steps that capture needs are undone (`StepRunner`). A source
of another kind runs the reference loop.
"""

from __future__ import annotations

import torch
from torch import nn

from intraq.fast.capture import StepRunner
from intraq.finetune.trainer import CalibrationSource, ImageSetCalibration, calibrate
from intraq.quantize import set_act_calibration
from intraq.synthesis.gdfq import GdfqCalibrationSource, set_adam_capturable


class FastCalibration:
    """One run's calibration: its student and source, stepped by a `StepRunner` that persists across epochs."""

    def __init__(self, student: nn.Module, source: CalibrationSource, device: torch.device, capture: str) -> None:
        self.student, self.source, self.device = student, source, device
        self.mode = "cudagraph" if capture == "cudagraph" and device.type == "cuda" else "none"
        self.runner: StepRunner | None = None
        self.gdfq = isinstance(source, GdfqCalibrationSource)
        self.images = source.images.to(device) if isinstance(source, ImageSetCalibration) else None
        self.known = self.gdfq or self.images is not None  # else: the reference loop
        self.loss = torch.zeros((), device=device)  # the generator's last loss, read once per epoch

    def epoch(self, steps: int) -> None:
        """`steps` calibration batches with the ranges updating, then the ranges frozen (as `calibrate`)."""
        if not self.known:
            calibrate(self.student, self.source, steps)
            return
        set_act_calibration(self.student, True)
        try:
            for _ in range(steps):
                inputs = self._draw()
                if self.runner is None:
                    self.runner = self._first_step(inputs)
                else:
                    self.runner(**inputs)
        finally:
            set_act_calibration(self.student, False)
        if self.gdfq and steps > 0:
            self.source.last_loss = float(self.loss)

    def _draw(self) -> dict[str, torch.Tensor]:
        if self.gdfq:
            z, labels = self.source.sample_inputs(self.source.batch_size)
            return {"z": z, "labels": labels}
        return {"idx": self.source.draw_index().to(self.device)}

    def _step(self, inputs: dict[str, torch.Tensor]) -> None:
        if self.gdfq:
            images, loss = self.source.update(inputs["z"], inputs["labels"])
            with torch.no_grad():
                self.loss.copy_(loss)
        else:
            images = self.images[inputs["idx"]]
        with torch.no_grad():
            self.student(images)

    def _first_step(self, inputs: dict[str, torch.Tensor]) -> StepRunner:
        """Run the first step eagerly (it creates Adam's state), then build the runner over static inputs."""
        if self.gdfq and self.mode == "cudagraph":
            set_adam_capturable(self.source.optimizer, self.device)
        self._step(inputs)
        static = {name: torch.empty_like(value) for name, value in inputs.items()}
        state = [*self.student.buffers(), self.loss]
        if self.gdfq:
            state += [*self.source.model.parameters(), *self.source.model.buffers()]
            state += [t for s in self.source.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return StepRunner(lambda: self._step(static), static, state, self.mode)
