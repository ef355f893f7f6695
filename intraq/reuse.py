"""Which stored record a run may reuse: any (the default), or only one made on this machine class.

A claim compares two cells only when every run of both ran on one machine class (`intraq.claims`), so a campaign
that reuses the records another class left (a CPU preview, an earlier GPU) ends with pairs it can never decide.
`--same-machine` treats such a record as absent: the case runs again here, and the record it replaces is kept
under `<results>/<profile>/other-machines/<class>/` (never silently lost, never read as a cell's result).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from intraq.artifacts import save_json
from intraq.claims import machine_class
from intraq.results import machine_info

OTHER_MACHINES = "other-machines"


def this_machine_class(device: torch.device | str = "cpu") -> str:
    """The machine class a run on `device` here gets in its record."""
    return machine_class(machine_info(device))


def required_class(device: torch.device | str, same_machine: bool) -> str | None:
    """The machine class a stored record must have to be reused by a run on `device`: this one's with
    `--same-machine`, else None (any)."""
    return this_machine_class(device) if same_machine else None


def displaced_class(stored_machine: dict | None, required: str | None) -> str | None:
    """The class of a stored record that a run requiring `required` does not reuse (None: it is reusable)."""
    stored = machine_class(stored_machine)
    return None if required is None or stored == required else stored


def reusable(path: Path, machine: str | None) -> bool:
    """Whether the record at `path` counts as done for a run that requires `machine` (None: any class). An
    unreadable record counts as done: the run that opens it refuses it with the fix, nothing is rerun blindly."""
    path = Path(path)
    return path.exists() and (machine is None or stored_is_reusable(read_stored(path), machine))


def read_stored(path: Path) -> Any:
    """The JSON of an existing record, or None when it cannot be read (the run that opens it names the fix)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def stored_is_reusable(blob: Any, machine: str | None) -> bool:
    """`reusable` for a record already read (`read_stored`)."""
    return machine is None or not isinstance(blob, dict) or displaced_class(blob.get("machine"), machine) is None


def class_folder_name(machine: str) -> str:
    """A folder name for a machine class: "CPU x86_64 AVX512, 2 cores, torch 2.14.1" -> "cpu-x86_64-avx512-2-cores-
    torch-2.14.1"."""
    return re.sub(r"[^a-z0-9._]+", "-", machine.lower()).strip("-") or "unknown"


def keep_displaced(path: Path, machine: str, companions: Sequence[Path] = ()) -> Path:
    """Copy the record at `path` (made on class `machine`) under other-machines/ before a run of this class
    writes its own over it (atomically: readers never find it missing), and move its `companions` there (e.g. its
    figure data, made from the old image set); an earlier copy of another record is never overwritten (a numbered
    name is taken)."""
    path = Path(path)
    folder = path.parent / OTHER_MACHINES / class_folder_name(machine)
    target, n = folder / path.name, 1
    content = json.loads(path.read_text())
    while target.exists() and _read_or_none(target) != content:  # an unreadable copy is another one: kept too
        n += 1
        target = folder / f"{path.stem}-{n}{path.suffix}"
    save_json(content, target)
    for companion in map(Path, companions):
        if companion.exists():
            moved = target.with_name(f"{target.stem}-{companion.parent.name}{companion.suffix}")
            os.replace(companion, moved)
            os.utime(moved)  # moved now: whoever collects what a run wrote (find -newer) takes it along
    return target


def _read_or_none(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
