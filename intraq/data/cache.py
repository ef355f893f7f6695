"""Decoded-image caches keyed on their source, and the source-path checks every file-backed data set shares.

A cache name carries a fingerprint of the resolved source path and the size/mtime of what it read, so pointing
`data.root` at another copy (or changing files in place) never silently reuses stale tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from intraq.artifacts import artifacts_root, load_torch, save_torch
from intraq.config import DataConfig
from intraq.errors import UserInputError

# Bump when the decoding or the cache layout changes: old caches then miss instead of loading wrong data.
CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def cache_dir(cfg: DataConfig) -> Path:
    """`data.cache_dir`, else $INTRAQ_ARTIFACTS/cache or ./artifacts/cache, whatever --artifacts a run names: one
    decoded copy per machine, shared by every artifacts folder (a resume folder then never holds it)."""
    return Path(cfg.cache_dir) if cfg.cache_dir else artifacts_root() / "cache"


def is_hidden(name: str) -> bool:
    """Dot files (.DS_Store, macOS `._x.jpg` forks) are never data."""
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def require_root(cfg: DataConfig, layouts: str) -> Path:
    """`cfg.root` as an existing path, or an error that says how to set it and what it may point at."""
    if not cfg.root:
        raise UserInputError(
            f"data set {cfg.name!r} needs its files: set data.root=PATH (or --data-root PATH). "
            f"Accepted layouts: {layouts}"
        )
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise UserInputError(
            f"data.root {str(root)!r} does not exist; fix the path (data.root=PATH / --data-root PATH). "
            f"Accepted layouts: {layouts}"
        )
    return root


def describe_dir(path: Path, limit: int = 12) -> str:
    """A short listing of a folder for error messages ('empty' when empty)."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError as exc:
        return f"unreadable ({exc})"
    if not names:
        return "nothing (empty folder)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


FileStat = tuple[str, int, int]  # (path relative to the source, size, mtime_ns)


def file_stats(base: Path, files: list[Path]) -> list[FileStat]:
    """Size and mtime of named files, keyed by their path relative to `base`."""
    stats = []
    for path in files:
        st = path.stat()
        stats.append((path.relative_to(base).as_posix() if path != base else "", st.st_size, st.st_mtime_ns))
    return stats


def tree_stats(top: Path, keep: Callable[[str], bool] | None = None) -> list[FileStat]:
    """Size and mtime of every non-hidden file under `top` (kept by `keep(name)`), sorted.

    os.scandir, not pathlib: a second build stats all 60k CIFAR files; this keeps that well under a second.
    """
    stats: list[FileStat] = []
    pending = [(str(top), "")]
    while pending:
        folder, rel = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_hidden(entry.name):
                    continue
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    pending.append((entry.path, name))
                elif entry.is_file() and (keep is None or keep(entry.name)):
                    st = entry.stat()
                    stats.append((name, st.st_size, st.st_mtime_ns))
    return sorted(stats)


def fingerprint(kind: str, source: Path, stats: list[FileStat]) -> str:
    """Short hash of the source's resolved path and each file's name, size and mtime."""
    blob = json.dumps([CACHE_VERSION, kind, str(source.resolve()), stats], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cache(path: Path, tensor_keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The cached dict, or None when absent; a corrupt or foreign file is an error that says delete it."""
    if not path.exists():
        return None
    data = load_torch(path)
    ok = isinstance(data, dict) and data.get("version") == CACHE_VERSION
    ok = ok and all(isinstance(data.get(key), torch.Tensor) for key in tensor_keys)
    if not ok:
        raise UserInputError(
            f"{path} is not a valid decoded-data cache (wrong version or contents); "
            "delete it and the run will decode the data again"
        )
    return data


def save_cache(data: dict[str, Any], path: Path) -> Path:
    """Atomic write of a cache dict; an unwritable cache folder becomes an error naming data.cache_dir."""
    try:
        return save_torch({**data, "version": CACHE_VERSION}, path)
    except OSError as exc:
        raise UserInputError(
            f"cannot write the decoded-data cache {path} ({exc}); set data.cache_dir=DIR to a writable folder"
        ) from exc


def walk_files(top: Path) -> list[Path]:
    """Every regular file under `top`, sorted, skipping hidden files and folders."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not is_hidden(f))
    return found
