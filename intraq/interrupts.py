"""Hold Ctrl-C and SIGTERM back while state is half-updated, so an interrupt always leaves a state worth saving;
and turn SIGTERM into Ctrl-C for a whole command (`sigterm_as_interrupt`).

An optimizer step is not atomic: an interrupt inside it would leave images and moments out of step, and the
driver could then only fall back to its last periodic checkpoint (or nothing, in the first minute). Inside
`deferred_interrupts()` the first signal is noted and delivered, through the handler that was in place, when the
block ends; a second one is delivered at once (a hung save can still be stopped). Outside the main thread
(where Python delivers no signals) it does nothing. If the block raises, its exception propagates and a held
signal is dropped: the run stops either way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    """Run the block with SIGINT/SIGTERM held; deliver the first one that came once the block is done."""
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
        for signum in HELD_SIGNALS:
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
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what Slurm sends before its time limit) stops the block like Ctrl-C: every loop then saves its
    checkpoint on the way out. The previous handler is put back after the block; outside the main thread
    (where Python delivers no signals) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
