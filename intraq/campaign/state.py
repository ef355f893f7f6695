"""Per-case state beside the results: a lock while a case runs, who runs it, and the error of a failed run.

Everything lives under `<results>/<profile>/.campaign/` (hidden, not copied when result folders are merged: the
records themselves are the results). The lock is a `filelock` on `locks/<case>-seed<N>.lock`: a second run of
the same case (another pytest-xdist worker, another campaign) waits for it and then reuses the stored result.
"""

from __future__ import annotations

import platform
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from intraq.artifacts import load_json, save_json
from intraq.locks import lock_holder, marked_lock
from intraq.results import now_utc

STATE_FOLDER = ".campaign"


def state_dir(results: Path, profile: str) -> Path:
    return Path(results) / profile / STATE_FOLDER


def _name(case: str, seed: int) -> str:
    return f"{case}-seed{seed}"


def lock_path(results: Path, profile: str, case: str, seed: int) -> Path:
    return state_dir(results, profile) / "locks" / f"{_name(case, seed)}.lock"


def running_path(results: Path, profile: str, case: str, seed: int) -> Path:
    return state_dir(results, profile) / "running" / f"{_name(case, seed)}.json"


def failed_path(results: Path, profile: str, case: str, seed: int) -> Path:
    return state_dir(results, profile) / "failed" / f"{_name(case, seed)}.json"


@contextmanager
def case_lock(results: Path, profile: str, case: str, seed: int) -> Iterator[None]:
    """Hold the case's lock (waiting as long as another process holds it) and say who runs it meanwhile."""
    with marked_lock(lock_path(results, profile, case, seed), running_path(results, profile, case, seed)):
        yield


def running_info(results: Path, profile: str, case: str, seed: int) -> dict[str, Any] | None:
    """Who runs the case now (None when nobody holds its lock; a crashed run's lock is free again)."""
    return lock_holder(lock_path(results, profile, case, seed), running_path(results, profile, case, seed))


def record_failure(results: Path, profile: str, case: str, seed: int, exc: BaseException) -> Path:
    """Keep a failed run's error (shown by `intraq status`; a campaign retries it only when asked)."""
    return save_json({
        "case": case, "seed": seed, "profile": profile, "host": platform.node(), "when": now_utc(),
        "error": f"{type(exc).__name__}: {exc}".strip(),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
    }, failed_path(results, profile, case, seed))


def read_failure(results: Path, profile: str, case: str, seed: int) -> dict[str, Any] | None:
    path = failed_path(results, profile, case, seed)
    return load_json(path) if path.exists() else None


def clear_failure(results: Path, profile: str, case: str, seed: int) -> None:
    failed_path(results, profile, case, seed).unlink(missing_ok=True)
