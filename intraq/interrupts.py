"""Hold Ctrl-C and the stop signals back while state is half-updated, so an interrupt always leaves a state worth
saving; and turn the stop signals into Ctrl-C for a whole command or job (`stop_signals_as_interrupt`).

The stop signals: SIGTERM (what Slurm sends before its time limit, and `kill`), and inside a submitit job also
submitit's timeout/preemption signal (USR2, or what SUBMITIT_PREEMPT_SIGNAL names), which Slurm sends ahead of the
limit; submitit's own handler would otherwise end the job where it stands (its callable is not checkpointable:
our loops checkpoint themselves on an interrupt).

An optimizer step is not atomic: an interrupt inside it would leave images and moments out of step, and the
driver could then only fall back to its last periodic checkpoint (or nothing, in the first minute). Inside
`deferred_interrupts()` the first signal is noted and delivered, through the handler that was in place, when the
block ends; a second one is delivered at once (a hung save can still be stopped). Outside the main thread
(where Python delivers no signals) it does nothing. If the block raises, its exception propagates and a held
signal is dropped: the run stops either way.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


def stop_signals() -> tuple[int, ...]:
    """SIGTERM, and in a submitit job its timeout/preemption signal (read when called: a job sets it up)."""
    found = [signal.SIGTERM]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        extra = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        if extra is not None and extra not in found:
            found.append(extra)
    return tuple(found)


def deliver(handler: Any, signum: int, frame: FrameType | None) -> None:
    """What `handler` (as `signal.signal` returned it) would have done with the signal."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL and signum == signal.SIGINT:
        raise KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    # SIG_IGN, or None (a handler not installed from Python): nothing to do from here


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block with SIGINT and the stop signals held; deliver the first one that came once the block is
    done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[tuple[int, FrameType | None]] = []
    previous: dict[int, Any] = {}
    holding = [True]

    def note(signum: int, frame: FrameType | None) -> None:
        # Once the block is over (e.g. a signal while the handlers are being put back), or on a second signal,
        # this forwards at once: a `note` left installed can never swallow an interrupt.
        if holding[0] and not arrived:
            arrived.append((signum, frame))
        else:
            deliver(previous.get(signum, signal.SIG_DFL), signum, frame)

    try:
        for signum in (signal.SIGINT, *stop_signals()):
            previous[signum] = signal.signal(signum, note)
        yield
    finally:
        holding[0] = False
        for signum, old in previous.items():
            if old is not None:  # a handler installed outside Python cannot be put back from here
                signal.signal(signum, old)
    if arrived:
        signum, frame = arrived[0]
        deliver(previous[signum], signum, frame)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """The stop signals (SIGTERM; submitit's timeout signal in a submitit job) stop the block like Ctrl-C: every
    loop then saves its checkpoint on the way out. The previous handlers are put back after the block; outside
    the main thread (where Python delivers no signals) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in stop_signals()}
    try:
        yield
    finally:
        for signum, old in previous.items():
            if old is not None:
                signal.signal(signum, old)


def ignore_stop_signals() -> None:
    """For a worker process between two pieces of work (`stop_signals_as_interrupt` sets and restores around
    each): a stop signal there must not kill it."""
    for signum in stop_signals():
        signal.signal(signum, signal.SIG_IGN)
