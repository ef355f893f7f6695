"""Hold Ctrl-C and SIGTERM back while state is half-updated, so an interrupt always leaves a state worth saving.

An optimizer step is not atomic: an interrupt inside it would leave images and moments out of step, and the
driver could then only fall back to its last periodic checkpoint (or nothing, in the first minute). Inside
`deferred_interrupts()` a signal is noted and delivered, through the handler that was in place, when the block
ends. Outside the main thread (where Python delivers no signals) it does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM held; deliver the first one that came, once the block is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[tuple[int, FrameType | None]] = []

    def note(signum: int, frame: FrameType | None) -> None:
        arrived.append((signum, frame))

    previous = {signum: signal.signal(signum, note) for signum in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if arrived:
        signum, frame = arrived[0]
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL and signum == signal.SIGINT:
            raise KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)
