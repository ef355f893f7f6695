"""Atomic, hash-named artifact files, each with a sha256 beside it: an interrupted run never leaves a half-written
file behind, and a damaged or edited file is refused instead of silently used."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from intraq.errors import UserInputError

DEFAULT_ROOT = "artifacts"
CHECKSUM_SUFFIX = ".sha256"  # `<file>.sha256`, in `sha256sum` format: `<hex>  <file name>`
RECOMPUTE = "delete it and its .sha256 file and run again to recompute it (nothing from it was used)"


def artifacts_root(root: str | os.PathLike | None = None) -> Path:
    """Where synthetic sets, teachers and caches live: the argument, $INTRAQ_ARTIFACTS, or ./artifacts."""
    return Path(root or os.environ.get("INTRAQ_ARTIFACTS") or DEFAULT_ROOT)


def _write_temp(path: Path, write) -> Path:
    """`write(handle)` into a fsync'ed temporary file beside `path`; returns the temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def checksum_path(path: str | os.PathLike) -> Path:
    """The sha256 file of an artifact: `<file>.sha256` beside it."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_checksums(path: str | os.PathLike) -> list[str]:
    """The sha256 values the artifact's checksum file accepts (the first is current; a second one exists only
    while, or if a crash interrupted, a save replacing the previous version). Empty when there is no file."""
    side = checksum_path(path)
    try:
        lines = side.read_text().splitlines()
    except FileNotFoundError:
        return []
    hashes = [line.split()[0].lower() for line in lines if line.strip()]
    if not hashes or any(len(h) != 64 or any(c not in "0123456789abcdef" for c in h) for h in hashes):
        raise UserInputError(
            f"{side} is not a sha256 checksum file: delete {Path(path).name} and {side.name} and run again to "
            "recompute it"
        )
    return hashes


def _write_checksums(path: Path, hashes: list[str]) -> None:
    text = "".join(f"{h}  {path.name}\n" for h in hashes)
    _atomic(checksum_path(path), lambda handle: handle.write(text.encode()))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file, its sha256 into `<file>.sha256`, then both renamed into place.

    The checksum file is renamed first, so the file never exists without its checksum; while the old version is
    being replaced the checksum file accepts both, so a crash between the two renames leaves a loadable pair."""
    path = Path(path)
    tmp = _write_temp(path, lambda handle: torch.save(obj, handle))
    try:
        new = sha256_of(tmp)
        try:
            previous = recorded_checksums(path) if path.exists() else []
        except UserInputError:
            previous = []
        if path.exists() and not previous:
            previous = [sha256_of(path)]  # a file written before checksums existed
        previous = [h for h in previous if h != new]
        _write_checksums(path, [new, *previous])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if previous:
        _write_checksums(path, [new])
    return path


def load_torch(path: str | os.PathLike, remedy: str = RECOMPUTE) -> Any:
    """torch.load(weights_only=True) of a file whose sha256 matches its checksum file; a mismatch or an unreadable
    file is an error that names the file and `remedy`. A file from before checksums existed is accepted once, with
    a notice, and its checksum recorded now."""
    path = Path(path)
    # Hashed in a stream, then loaded from the file (not from one bytes copy: sets can be GBs). Our writers only
    # ever replace a file whole, with its checksum, so the two reads see the same file.
    actual = sha256_of(path)  # FileNotFoundError propagates: callers decide what a missing file means
    recorded = recorded_checksums(path)
    if recorded and actual not in recorded:
        raise UserInputError(
            f"{path} was damaged or changed after it was written: its sha256 is {actual[:12]}…, but "
            f"{checksum_path(path).name} records {recorded[0][:12]}…; {remedy}"
        )
    if not recorded:
        _record_legacy_checksum(path, actual)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise UserInputError(f"{path} could not be read ({type(exc).__name__}: {exc}); {remedy}") from exc


def _record_legacy_checksum(path: Path, actual: str) -> None:
    try:
        _write_checksums(path, [actual])
        note = f"recording its sha256 in {checksum_path(path).name} now"
    except OSError as exc:
        note = f"could not record its sha256 ({exc.strerror or exc}); it is checked from the next save on"
    print(f"intraq: notice: {path} has no checksum file (written before checksums existed); {note}", file=sys.stderr)


def remove_artifact(path: str | os.PathLike) -> None:
    """Delete an artifact and its checksum file (the file first: a checksum without its file is harmless)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return _atomic(Path(path), lambda handle: handle.write(text.encode()))


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not valid JSON ({exc}); delete it to recompute") from exc
