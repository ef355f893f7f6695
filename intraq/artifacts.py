"""Atomic, hash-named artifact files: an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from intraq.errors import UserInputError

DEFAULT_ROOT = "artifacts"


def artifacts_root(root: str | os.PathLike | None = None) -> Path:
    """Where synthetic sets, teachers and caches live: the argument, $INTRAQ_ARTIFACTS, or ./artifacts."""
    return Path(root or os.environ.get("INTRAQ_ARTIFACTS") or DEFAULT_ROOT)


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save, written to a temporary file and renamed into place."""
    return _atomic(Path(path), lambda handle: torch.save(obj, handle))


def load_torch(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) with an error that names the corrupt file and the fix."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise UserInputError(
            f"{path} could not be read ({type(exc).__name__}: {exc}); it is corrupt or not ours: "
            "delete it and the run will recompute it"
        ) from exc


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return _atomic(Path(path), lambda handle: handle.write(text.encode()))


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not valid JSON ({exc}); delete it to recompute") from exc
