"""Get the full-precision teacher a case names: a local checkpoint (own recipe), torchvision or pytorchcv.

Downloads happen only when the user selects a pretrained source without a local file; a failed download
raises, it never falls back to another model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intraq.artifacts import load_json, save_json
from intraq.config import TeacherConfig, config_hash
from intraq.data.base import DataSplits
from intraq.errors import UserInputError
from intraq.evaluate import evaluate
from intraq.teacher.checkpoint import load_teacher_weights, sha256_file
from intraq.teacher.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Teacher:
    model: nn.Module
    info: dict[str, Any]  # source, checkpoint, sha256, test_top1, ...


def recipe_checkpoint_path(cfg: TeacherConfig, data_name: str, artifacts: Path) -> Path:
    """The artifacts file of a teacher trained with `cfg`'s recipe: named by architecture, data set and recipe
    hash. `teacher.auto_train` trains here, and so does `intraq teacher train` unless given --out."""
    recipe = {k: v for k, v in vars(cfg).items() if k.startswith("train_")} | {"name": cfg.name, "data": data_name}
    arch = cfg.name.replace(":", "-")  # torchvision:resnet50 -> torchvision-resnet50 (no ':' in file names)
    return artifacts / "teachers" / f"{arch}-{data_name}-{config_hash(recipe)}.pt"


def local_checkpoint_path(cfg: TeacherConfig, data_name: str, artifacts: Path) -> Path:
    """The local teacher's file: `teacher.checkpoint` if set, else the recipe's file under the artifacts."""
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
            return REPO_ROOT / path  # committed teachers (teachers/...) also resolve outside the repo's root
        return path
    return recipe_checkpoint_path(cfg, data_name, artifacts)


def _pretrained_torchvision(cfg: TeacherConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    model = build_model(cfg.name, num_classes)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.exists():
            raise UserInputError(f"teacher.checkpoint {path} does not exist")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, {"checkpoint": str(path), "sha256": sha256_file(path)}
    from torchvision.models import ResNet18_Weights

    from intraq.teacher.torchvision_models import is_torchvision_name, pretrained_state_dict

    if is_torchvision_name(cfg.name):  # torchvision's default ImageNet weights; a failed download raises
        state, weights_name = pretrained_state_dict(cfg.name, num_classes)
        model.load_state_dict(state)
        return model, {"weights": weights_name}
    if cfg.name != "resnet18":
        raise UserInputError(
            f"torchvision weights for teacher.name={cfg.name!r}: use resnet18 (the paper's lineage) or "
            "torchvision:<name> for any torchvision classification model"
        )
    weights = ResNet18_Weights.IMAGENET1K_V1
    model.load_state_dict(weights.get_state_dict(progress=True))  # network: raises if it cannot download
    return model, {"weights": str(weights)}


def _pretrained_pytorchcv(cfg: TeacherConfig) -> tuple[nn.Module, dict[str, Any]]:
    try:
        from pytorchcv.model_provider import get_model
    except ImportError:
        raise UserInputError(
            "teacher.source=pytorchcv needs the optional package: pip install pytorchcv==0.0.51 "
            "(0.0.51 maps resnet18 to the paper's 71.47% weights; newer versions do not, trap T17)"
        ) from None
    model = get_model(cfg.name, pretrained=cfg.checkpoint is None)
    info: dict[str, Any] = {"pytorchcv_model": cfg.name}
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        info |= {"checkpoint": str(path), "sha256": sha256_file(path)}
    model.feature_module_name = "features.final_pool"
    return model, info


def get_teacher(
    cfg: TeacherConfig, data: DataSplits, device: torch.device, artifacts: Path, progress: bool = True
) -> Teacher:
    """The teacher in eval mode with frozen parameters, and what we know of it (incl. measured test top-1)."""
    if cfg.source == "local":
        path = local_checkpoint_path(cfg, data.name, artifacts)
        model = build_model(cfg.name, data.num_classes, data.channels)
        if not path.exists():
            if cfg.checkpoint:  # an explicit path is never trained into silently: a typo would make a new teacher
                raise UserInputError(
                    f"teacher.checkpoint {cfg.checkpoint} does not exist. Check the path; to train a teacher there, "
                    f"run `intraq teacher train --profile <profile> --out {cfg.checkpoint}`; or leave "
                    "teacher.checkpoint unset to use the profile's teacher (teacher.auto_train trains that one)"
                )
            if not cfg.auto_train:
                raise UserInputError(
                    f"no teacher checkpoint at {path}. Train it with `intraq teacher train --profile <profile>` "
                    "or point teacher.checkpoint=FILE at one"
                )
            from intraq.teacher.train import train_teacher

            train_teacher(cfg, data, path, cfg.train_seed, device, progress, wait=True)  # another case may be at it
        info = load_teacher_weights(model, path) | {"checkpoint": str(path)}
        trained_on = info.get("data")
        if trained_on is not None and trained_on != data.name:
            if not cfg.allow_other_data:
                raise UserInputError(
                    f"teacher {path} was trained on data {trained_on!r} (its sidecar says so), but this run's data is "
                    f"{data.name!r}: point teacher.checkpoint at a teacher of {data.name!r}, or set "
                    "teacher.allow_other_data=true to use it anyway (the record then says so)"
                )
            info["used_on_other_data"] = f"trained on {trained_on!r}, used on {data.name!r}"
    elif cfg.source == "torchvision":
        model, info = _pretrained_torchvision(cfg, data.num_classes)
    elif cfg.source == "pytorchcv":
        model, info = _pretrained_pytorchcv(cfg)
    else:
        raise UserInputError(f"unknown teacher.source {cfg.source!r}; known: local, torchvision, pytorchcv")
    model = model.to(device).eval().requires_grad_(False)
    info = dict(info, source=cfg.source, name=cfg.name)
    info["test_top1"] = _measured_accuracy(model, info, data, device, artifacts, progress)
    return Teacher(model=model, info=info)


def _measured_accuracy(
    model: nn.Module, info: dict[str, Any], data: DataSplits, device: torch.device, artifacts: Path, progress: bool
) -> float:
    """Test top-1 of this exact teacher on this data set, measured once and cached by weights hash."""
    key = info.get("sha256") or info.get("weights") or info.get("pytorchcv_model")
    data_id = data.identity or data.name  # two data sets of one name never share a measured accuracy
    cache = artifacts / "teachers" / f"eval-{config_hash({'key': key, 'data': data_id})}.json"
    if cache.exists():
        return float(load_json(cache)["test_top1"])
    accuracy = evaluate(model, data.test, device=device, progress=progress)
    save_json({"key": key, "data": data_id, "test_top1": accuracy}, cache)
    return accuracy
