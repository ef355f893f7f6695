"""How the fast path computes, and the numeric settings every record stores (TF32 and cuDNN change numbers).

Defaults are what the official code gets on an Ampere/Hopper GPU with its torch (1.x era): TF32 on for
convolutions (cuDNN's default since torch 1.7) and on for matmuls (torch < 1.12 default), cuDNN benchmark on
(the official scripts set `cudnn.benchmark = True`), not deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass

import torch

CAPTURE_MODES = ("none", "compile", "cudagraph")


@dataclass
class NumericSettings:
    """Backend flags that change the numbers of a run (recorded in every record of the fast path)."""

    allow_tf32_matmul: bool = True
    allow_tf32_cudnn: bool = True
    cudnn_benchmark: bool = True
    cudnn_deterministic: bool = False

    def apply(self) -> None:
        """Set the process-wide flags (torch keeps them globally; call once before any step)."""
        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32_matmul
        torch.backends.cudnn.allow_tf32 = self.allow_tf32_cudnn
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The flags for the duration of the block, then the process's own again: what runs outside the fast
        loops (the reference path, a teacher's training) keeps torch's flags, as its records say."""
        saved = NumericSettings(bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32),
                                bool(torch.backends.cudnn.benchmark), bool(torch.backends.cudnn.deterministic))
        self.apply()
        try:
            yield
        finally:
            saved.apply()

    def to_dict(self) -> dict:
        return asdict(self)


def current_numeric_settings() -> dict:
    """What the process actually runs with now (read back from torch, not from our config)."""
    return {
        "allow_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "allow_tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


@dataclass
class FastSettings:
    """How, not what: none of these is part of any config hash (results agree within float rounding).

    capture: `none` (eager, still no host sync per step), `compile` (torch.compile; mode reduce-overhead on
    CUDA, which captures CUDA graphs itself), `cudagraph` (one torch.cuda.CUDAGraph per step shape with static
    inputs; CUDA only). Which is faster is measured by the throughput benchmark. `read_every`: the host reads
    the device-side loss sums every this many steps (stage 2 also at every epoch end, where it evaluates).
    """

    capture: str = "none"
    channels_last: bool = True
    numeric: NumericSettings | None = None  # None: leave the process's flags as they are
    read_every: int = 200
    eval_batch_size: int = 10_000

    def __post_init__(self) -> None:
        if self.capture not in CAPTURE_MODES:
            raise ValueError(f"unknown capture {self.capture!r}; choose one of {', '.join(CAPTURE_MODES)}")
        if self.read_every < 1:
            raise ValueError(f"read_every must be >= 1, got {self.read_every}")

    def numeric_applied(self) -> AbstractContextManager[None]:
        """`numeric.applied()`, or nothing when the settings leave the flags as they are."""
        return self.numeric.applied() if self.numeric is not None else nullcontext()

    def check_device(self, device: torch.device) -> None:
        if self.capture == "cudagraph" and device.type != "cuda":
            raise ValueError("capture='cudagraph' needs a CUDA device; use 'none' or 'compile' on the CPU")

    def record(self) -> dict:
        """The settings plus the backend flags in force (stored with every result of the fast path)."""
        return {
            "capture": self.capture, "channels_last": self.channels_last, "read_every": self.read_every,
            "eval_batch_size": self.eval_batch_size, "numeric": current_numeric_settings(),
        }


FAST_CHOICES = ("auto", *CAPTURE_MODES)  # what `--fast` accepts: auto picks the capture for the device


def check_fast_mode(mode: str) -> None:
    """An unknown `--fast` capture is a user error naming the choices (checkable where no device is known)."""
    from intraq.errors import UserInputError

    if mode not in FAST_CHOICES:
        raise UserInputError(f"unknown fast-path capture {mode!r}; choose one of {', '.join(FAST_CHOICES)}")


def fast_settings_for(device: torch.device, mode: str | None) -> FastSettings | None:
    """`--fast MODE` as settings (None: the reference path); a mode the device cannot run is a user error."""
    from intraq.errors import UserInputError

    if mode is None:
        return None
    check_fast_mode(mode)
    settings = default_fast_settings(device, None if mode == "auto" else mode)
    try:
        settings.check_device(device)
    except ValueError as exc:
        raise UserInputError(f"--fast {mode}: {exc}") from None
    return settings


def default_fast_settings(device: torch.device, capture: str | None = None) -> FastSettings:
    """CUDA: official-like numeric flags and CUDA-graph capture; CPU: eager, flags untouched."""
    if device.type == "cuda":
        return FastSettings(capture=capture or "cudagraph", numeric=NumericSettings())
    return FastSettings(capture=capture or "none")
