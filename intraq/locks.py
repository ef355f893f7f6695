"""A file lock with a marker beside it saying who holds it: a second process can wait for it, or be told who is at it.

Used for one case of a campaign at a time (`intraq.campaign.state`) and one training of a teacher at a time
(`intraq.teacher.train`). The lock is a `filelock`, released by the OS when its holder dies; the marker (host, pid,
start) is removed when the holder lets go, and is only read while the lock is held.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from intraq.artifacts import load_json, save_json
from intraq.results import now_utc


@contextmanager
def marked_lock(lock_path: Path, marker_path: Path, timeout: float = -1) -> Iterator[None]:
    """Hold `lock_path` (waiting up to `timeout` seconds, -1: as long as it takes; `filelock.Timeout` on entry
    otherwise) and, while it is held, the marker `marker_path` naming this process."""
    for path in (lock_path, marker_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    lock.acquire(timeout=timeout)
    try:
        save_json({"host": platform.node(), "pid": os.getpid(), "started": now_utc()}, marker_path)
        yield
    finally:
        marker_path.unlink(missing_ok=True)
        lock.release()


def lock_holder(lock_path: Path, marker_path: Path) -> dict[str, Any] | None:
    """Who holds the lock now: its marker ({} while it cannot be read), or None when nobody does."""
    if not lock_path.exists():
        return None
    try:
        with FileLock(lock_path, timeout=0):
            return None
    except Timeout:
        try:
            return load_json(marker_path)
        except Exception:  # noqa: BLE001 - the holder may be writing it right now, or have just let go
            return {}
