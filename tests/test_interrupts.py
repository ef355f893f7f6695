"""Interrupts held back while state is half-updated: the race that made a SIGTERM in the first minute of a batch
leave no checkpoint (an optimizer step in progress when the signal came)."""

from __future__ import annotations

import os
import signal

import pytest
from tqdm.auto import tqdm

from intraq.interrupts import deferred_interrupts
from intraq.synthesis.driver import BatchCheckpoint, run_iterations


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_inside_the_block_arrives_when_it_ends(signum):
    def as_interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, as_interrupt)
    before_int = signal.getsignal(signal.SIGINT)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                os.kill(os.getpid(), signum)
                steps.append("finished the block")
            steps.append("after the block")
        assert signal.getsignal(signal.SIGTERM) is as_interrupt  # put back
        assert signal.getsignal(signal.SIGINT) is before_int
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert steps == ["finished the block"]


def test_a_second_signal_is_delivered_at_once():
    """Ctrl-C twice: the second stops even a block that hangs (a save on a stalled file system)."""
    steps = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("held the first")
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("never reached")
    assert steps == ["held the first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_effect():
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupts():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_interrupt_during_update_saves_the_finished_iteration(tmp_path):
    """Ctrl-C while `update` runs in the first iteration (before any periodic checkpoint): the update completes
    and the state after it is saved, instead of nothing."""
    state = {"value": 0}

    def update(it: int, out: object) -> None:
        if it == 0:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-update
        state["value"] += 1

    checkpoint = BatchCheckpoint(tmp_path / "b.partial.pt", every_seconds=3600)
    with pytest.raises(KeyboardInterrupt), tqdm(disable=True) as bar:
        run_iterations(0, 10, lambda it: None, update, lambda done: {"iteration": done, **state}, checkpoint, bar)
    assert checkpoint.load() == {"iteration": 1, "value": 1}
