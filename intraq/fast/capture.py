"""Run one training step eagerly or as a replayed CUDA graph, reading its inputs from static buffers.

The step is a closure over tensors that stay in place (parameters, optimizer state, static inputs). Each call
first copies the step's per-step inputs (indices, crop matrices, coins) into the static buffers, device to
device, then runs the closure (`none`, `compile`: the caller compiled the loss part) or replays its graph
(`cudagraph`). Capture needs warm-up steps on a side stream; they change the state, so the state is saved
before and restored after them: the first real step is the run's first step, as in the reference loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class StepRunner:
    def __init__(
        self, step: Callable[[], None], inputs: dict[str, torch.Tensor], state: list[torch.Tensor], mode: str,
        warmup: int = 3,
    ) -> None:
        self.step, self.inputs, self.state, self.mode, self.warmup = step, inputs, state, mode, warmup
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, **values: torch.Tensor) -> None:
        with torch.no_grad():
            for name, value in values.items():
                self.inputs[name].copy_(value, non_blocking=True)
        if self.mode != "cudagraph":
            self.step()
            return
        if self.graph is None:
            self.graph = self._capture()
        self.graph.replay()

    def _capture(self) -> torch.cuda.CUDAGraph:
        with torch.no_grad():
            saved = [t.detach().clone() for t in self.state]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for tensor, value in zip(self.state, saved, strict=True):
                tensor.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()  # recorded, not run: the state is still the saved one
        return graph


def compile_loss(fn: Callable, mode: str, device: torch.device) -> Callable:
    """`compile`: torch.compile the loss part (reduce-overhead on CUDA: CUDA graphs of forward and backward)."""
    if mode != "compile":
        return fn
    return torch.compile(fn, mode="reduce-overhead" if device.type == "cuda" else "default")
