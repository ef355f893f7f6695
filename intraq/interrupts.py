"""Hold Ctrl-C and the stop signals back while state is half-updated, so an interrupt always leaves a state worth
saving; and turn the stop signals into Ctrl-C for a whole command or job (`stop_signals_as_interrupt`).

The stop signals: SIGTERM (`kill`, `scancel`, and Slurm at a job's time limit, SIGKILL following after its
KillWait), and inside a submitit job also submitit's timeout/preemption signal (USR2, or what
SUBMITIT_PREEMPT_SIGNAL names), which Slurm sends ahead of the limit; submitit's own handler would otherwise end
the job where it stands (its callable is not checkpointable: our loops checkpoint themselves on an interrupt).

An optimizer step is not atomic: an interrupt inside it would leave images and moments out of step, and the
driver could then only fall back to its last periodic checkpoint (or nothing, in the first minute). Inside
`deferred_interrupts()` the first signal is noted and delivered, through the handler that was in place, when the
block ends; a second one is delivered at once (a hung save can still be stopped with Ctrl-C: a second stop
signal is dropped by `stop_signals_as_interrupt`, since Slurm sends one to every process of a job). Outside the
main thread (where Python delivers no signals) it does nothing. If the block raises, its exception propagates
and a held signal is dropped: the run stops either way.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


def stop_signals() -> tuple[int, ...]:
    """SIGTERM, and in a submitit job its timeout/preemption signal (read when called: a job sets it up)."""
    found = [signal.SIGTERM]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        extra = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        if extra is not None and extra not in (signal.SIGTERM, signal.SIGINT):  # SIGINT is Ctrl-C already
            found.append(extra)
    return tuple(found)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


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
    if not _in_main_thread():
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
        for signum in dict.fromkeys((signal.SIGINT, *stop_signals())):
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


@contextmanager
def _stop_signals_handled(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    if not _in_main_thread():  # Python delivers signals to the main thread only
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in stop_signals()}
    try:
        yield
    finally:
        for signum, old in previous.items():
            if old is not None:  # a handler installed outside Python cannot be put back from here
                signal.signal(signum, old)


@contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """The stop signals (SIGTERM; submitit's timeout signal in a submitit job) stop the block like Ctrl-C: every
    loop then saves its checkpoint on the way out. Only the first does: Slurm signals every process of a job
    (and a job's process passes a signal on to its workers), so a second one, arriving while the first is being
    handled, must not cut the save short (Ctrl-C still does). The previous handlers are put back after the
    block; outside the main thread it does nothing."""
    fired: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt

    with _stop_signals_handled(stop):
        yield


@contextmanager
def stop_signals_noted() -> Iterator[list[int]]:
    """The stop signals that arrive in the block are noted in the list it yields, not raised: for the stretch
    between two pieces of work, which then ends instead of beginning the next one (an interrupt there could
    land after a piece's outcome is known and before it is kept)."""
    arrived: list[int] = []
    with _stop_signals_handled(lambda signum, frame: arrived.append(signum)):
        yield arrived


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold the stop signals back (the signal mask) while worker processes are started: a process inherits the
    mask, so a new worker cannot be killed by one before `worker_ignores_stop_signals` runs; one that arrived
    meanwhile reaches this process when the block ends."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def worker_ignores_stop_signals() -> None:
    """A worker process's initializer: between two pieces of work a stop signal must not kill it (that would
    break its pool and lose the other workers' outcomes); `stop_signals_as_interrupt` around each piece makes
    one stop that piece. Unblocks what `stop_signals_blocked` held (a signal held until now is dropped)."""
    stops = stop_signals()
    for signum in stops:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
