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


def state_dict_of(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file: a plain state dict, or a full checkpoint holding one under `state_dict`,
    `model` or `model_state_dict`; `module.` prefixes (DataParallel, DDP) are dropped."""
    if isinstance(blob, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserInputError(
            f"teacher checkpoint {path} holds no state dict (tensors by parameter name), nor a checkpoint with one "
            "under state_dict / model_state_dict / model; save it with torch.save(model.state_dict(), path)"
        )
    if all(k.startswith("module.") for k in blob):
        blob = {k.removeprefix("module."): v for k, v in blob.items()}
    return blob


def load_teacher_weights(model: nn.Module, path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load `path` into `model`; with a sidecar, after checking its sha256. Returns the sidecar, or for a file
    without one (a user's own checkpoint) what loading learnt: its sha256, computed now."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(
            f"teacher checkpoint {path} does not exist; check the path, or train one there with "
            f"`intraq teacher train --profile <profile> --out {path}`"
        )
    if not sidecar_path(path).exists():
        state = state_dict_of(load_torch(path, remedy=TEACHER_REMEDY), path)
        _fit(model, state, path)
        return {"sha256": sha256_file(path), "sidecar": None, "file": path.name}
    sidecar = read_sidecar(path)
    if verify:
        actual = sha256_file(path)
        expected = sidecar.get("sha256")
        if actual != expected:
            raise UserInputError(
                f"teacher checkpoint {path} has sha256 {actual[:16]}… but its sidecar {sidecar_path(path)} "
                f"records {str(expected)[:16]}…: the file changed after its sidecar was written. {TEACHER_REMEDY}"
            )
    state = state_dict_of(load_torch(path, remedy=TEACHER_REMEDY), path)
    _fit(model, state, path)
    return sidecar


def _fit(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load `state` into `model`, or name what does not fit (keys, shapes) before anything is loaded."""
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
