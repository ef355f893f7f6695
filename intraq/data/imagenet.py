"""`imagenet`: ILSVRC-2012 as lazy ImageFolder splits with the lineage's test transform (methods §1.5).

Nothing is decoded up front: 1.28M images do not fit in memory, so each access reads and transforms one file.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms
from torchvision.datasets import ImageFolder

from intraq.config import DataConfig
from intraq.data.base import DataSplits, Normalization
from intraq.data.cache import describe_dir, is_hidden, is_image_name, require_root, tree_stats
from intraq.data.image_folder import tree_identity
from intraq.errors import UserInputError

IMAGENET_NORM = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
IMAGE_SIZE = 224
RESIZE = 256
SPLITS = ("train", "val")
LAYOUTS = "an ImageFolder tree: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG with the same class folders in both"


class _VisibleImageFolder(ImageFolder):
    """ImageFolder that skips hidden folders (.ipynb_checkpoints, ...), else counted as classes."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in Path(directory).iterdir() if e.is_dir() and not is_hidden(e.name))
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {name: i for i, name in enumerate(classes)}


def eval_transform(norm: Normalization = IMAGENET_NORM) -> transforms.Compose:
    """Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize, as the lineage's ImageNet val loader."""
    return transforms.Compose(
        [
            transforms.Resize(RESIZE),
            transforms.CenterCrop(IMAGE_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(norm.mean, norm.std),
        ]
    )


def _split_dir(root: Path, split: str) -> Path:
    path = root / split
    if not path.is_dir():
        raise UserInputError(
            f"{root} has no {split}/ folder; it holds: {describe_dir(root)}. Expected {LAYOUTS}; "
            "point data.root at the folder that holds train/ and val/"
        )
    if any(is_image_name(p.name) for p in path.iterdir() if p.is_file()):
        raise UserInputError(
            f"{path} holds images directly, not in class folders; sort them into <wnid>/ folders "
            "(e.g. with the common valprep.sh script) so that ImageFolder can label them"
        )
    return path


def _open_split(path: Path) -> ImageFolder:
    try:
        return _VisibleImageFolder(str(path), transform=eval_transform())
    except FileNotFoundError as exc:
        raise UserInputError(
            f"{path}: no images found ({exc}); expected {path.name}/<class>/*.JPEG with at least one image per class"
        ) from exc


def build_imagenet(cfg: DataConfig) -> DataSplits:
    """Lazy train/val splits; train and val must have the same class folders so that labels agree."""
    root = require_root(cfg, LAYOUTS)
    if not root.is_dir():
        raise UserInputError(f"data.root {str(root)!r} is not a folder; expected {LAYOUTS}")
    train_dir, val_dir = (_split_dir(root, split) for split in SPLITS)
    train, val = _open_split(train_dir), _open_split(val_dir)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UserInputError(
            f"{root}: train/ has {len(train.classes)} class folders and val/ {len(val.classes)}, and they "
            f"differ (only in train: {', '.join(only_train[:10]) or 'none'}; "
            f"only in val: {', '.join(only_val[:10]) or 'none'}); "
            "labels would not match: use the same class folders in both"
        )
    return DataSplits(
        name="imagenet",
        train=train,
        test=val,
        num_classes=len(train.classes),
        norm=IMAGENET_NORM,
        image_size=IMAGE_SIZE,
        class_names=list(train.classes),
        identity=tree_identity("imagenet", [(f"{d.name}/{rel}", size) for d in (train_dir, val_dir)
                                            for rel, size, _ in tree_stats(d, is_image_name)]),
    )
