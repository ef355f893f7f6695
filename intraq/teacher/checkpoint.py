"""Teacher checkpoints with a JSON sidecar; loading verifies the file's sha256 and says what differs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intraq.artifacts import load_json, load_torch, save_json, save_torch
from intraq.errors import UserInputError

# A teacher is an input, not a cache: nothing recomputes it, so "delete it" is never the advice.
TEACHER_REMEDY = (
    "Restore the original file (a committed teacher: `git checkout -- <file>`); if you meant to use other weights, "
    "give them their own path and sidecar (for the project's recipe: `intraq teacher train --out NEW_PATH`)"
)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def save_teacher(model: nn.Module, path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write the state dict, then the sidecar (test top-1, sha256, command, seed, versions, wall time...)."""
    path = Path(path)
    save_torch(model.state_dict(), path)
    sidecar = dict(info, sha256=sha256_file(path), file=path.name, torch=torch.__version__)
    save_json(sidecar, sidecar_path(path))
    return sidecar


def read_sidecar(path: str | Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.exists():
        raise UserInputError(
            f"teacher checkpoint {path} has no sidecar {side}; it records the hash and accuracy that loading "
            "checks. Retrain with `intraq teacher train`, or restore the .json next to the checkpoint"
        )
    return load_json(side)


def load_teacher_weights(model: nn.Module, path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load `path` into `model` after checking the sidecar's sha256; returns the sidecar."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(
            f"teacher checkpoint {path} does not exist; check the path, or train one there with "
            f"`intraq teacher train --profile <profile> --out {path}`"
        )
    sidecar = read_sidecar(path)
    if verify:
        actual = sha256_file(path)
        expected = sidecar.get("sha256")
        if actual != expected:
            raise UserInputError(
                f"teacher checkpoint {path} has sha256 {actual[:16]}… but its sidecar {sidecar_path(path)} "
                f"records {str(expected)[:16]}…: the file changed after its sidecar was written. {TEACHER_REMEDY}"
            )
    state = load_torch(path, remedy=TEACHER_REMEDY)
    mine = model.state_dict()
    missing = sorted(set(mine) - set(state))
    extra = sorted(set(state) - set(mine))
    shapes = [k for k in set(mine) & set(state) if mine[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise UserInputError(
            f"teacher checkpoint {path} does not fit architecture {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, shape mismatch {shapes[:5]}"
        )
    model.load_state_dict(state)
    return sidecar
