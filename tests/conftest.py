"""Shared fixtures: small, fast, offline. Torch uses one thread so tests are stable on a 2-core machine."""

from __future__ import annotations

import signal

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_raises():
    """The interrupt tests send themselves SIGINT and expect KeyboardInterrupt; a runner started in the background
    (`nohup`, `cmd &` in a script) starts Python with SIGINT ignored, which would let those signals vanish."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that shrink the smoke profile to a few seconds per case."""
    return [
        "teacher.train_epochs=3",
        "synth.num_images=64",
        "synth.batch_size=32",
        "synth.iterations=10",
        "finetune.epochs=3",
        "finetune.calib_epochs=1",
        "finetune.iters_per_epoch=4",
        "finetune.batch_size=32",
    ]
