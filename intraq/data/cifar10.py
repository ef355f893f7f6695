"""`cifar10`: CIFAR-10 from torchvision's folder, an ImageFolder tree or the JPEG archive, decoded once.

Images are decoded to uint8 (N, 3, 32, 32) a single time and saved under
<cache_dir>/cifar10-<fingerprint>.pt; later builds only stat the source and load that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from intraq.config import DataConfig
from intraq.data.base import DataSplits, Normalization, TensorImageDataset
from intraq.data.cache import cache_dir, describe_dir, file_stats, fingerprint, load_cache, require_root, save_cache
from intraq.data.image_folder import (
    CACHE_KEYS,
    FolderSource,
    FolderSpec,
    check_cached,
    content_identity,
    find_archive_or_tree,
    read_source,
)
from intraq.errors import UserInputError

# The GDFQ/Qimera/IntraQ CIFAR-10 test loader (methods §1.5): the lineage's numbers were measured with it.
LINEAGE_CIFAR10_NORM = Normalization(
    mean=(0.49139968, 0.48215827, 0.44653124), std=(0.24703233, 0.24348505, 0.26158768)
)
# What imgclsmob/pytorchcv trained its CIFAR ResNet-20s with (trap T19); unused, kept to name the difference.
IMGCLSMOB_CIFAR_NORM = Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
CIFAR10_NORM = LINEAGE_CIFAR10_NORM

NUM_CLASSES = 10
IMAGE_SIZE = 32
SPLITS = ("train", "test")
TV_FOLDER = "cifar-10-batches-py"
TV_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
LAYOUTS = (
    f"(a) torchvision's CIFAR-10 folder: a folder holding {TV_FOLDER}/ (or {TV_FOLDER} itself); "
    "(b) an ImageFolder tree with train/<class>/*.jpg and test/<class>/*.jpg, 10 class folders each; "
    "(c) the archive cifar10-jpeg.tar.gz holding such a tree, or a folder holding that one archive"
)

CIFAR10_SPEC = FolderSpec(
    title="CIFAR-10", num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, channels=3, test_names=("test",),
    layouts=LAYOUTS, hint="this is not CIFAR-10 data; remove the file or point data.root at CIFAR-10",
    preferred_archive="cifar10-jpeg.tar.gz",
)
ARCHIVE_HINT = (
    f" Expected cifar10-jpeg.tar.gz; for torchvision's cifar-10-python.tar.gz, unpack it and point data.root at "
    f"the folder holding {TV_FOLDER}/"
)


def _find_source(root: Path) -> FolderSource:
    """torchvision's folder first, then the generic tree / archive / folder holding one archive."""
    if root.is_dir():
        for tv_dir in (root / TV_FOLDER, root):
            if (tv_dir / "data_batch_1").exists():
                if tv_dir.name != TV_FOLDER:
                    raise UserInputError(
                        f"{tv_dir} holds CIFAR python batches, but torchvision reads them only from a folder "
                        f"named {TV_FOLDER}: rename the folder and point data.root at it or its parent"
                    )
                missing = [name for name in TV_FILES if not (tv_dir / name).is_file()]
                if missing:
                    raise UserInputError(
                        f"{tv_dir} lacks {', '.join(missing)}; expected all of {', '.join(TV_FILES)} as "
                        "unpacked from cifar-10-python.tar.gz: unpack that archive again"
                    )
                stats = file_stats(tv_dir, [tv_dir / name for name in TV_FILES])
                return FolderSource("torchvision", tv_dir, "", stats)
    source = find_archive_or_tree(root, CIFAR10_SPEC)
    if source is None:
        raise UserInputError(
            f"data.root {str(root)!r} matches no CIFAR-10 layout; it holds: {describe_dir(root)}. "
            f"Accepted layouts: {LAYOUTS}"
        )
    return source


def _read_torchvision(tv_dir: Path) -> dict[str, Any]:
    from torchvision.datasets import CIFAR10

    data: dict[str, Any] = {}
    for split in SPLITS:
        try:
            dataset = CIFAR10(str(tv_dir.parent), train=split == "train", download=False)
        except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:
            raise UserInputError(
                f"{tv_dir}: torchvision could not read CIFAR-10 there ({exc}); its files fail the md5 check "
                "or are not cifar-10-python.tar.gz's: unpack that archive again"
            ) from exc
        images = torch.from_numpy(np.ascontiguousarray(dataset.data))
        data[f"{split}_images"] = images.permute(0, 3, 1, 2).contiguous()
        data[f"{split}_labels"] = torch.tensor(dataset.targets, dtype=torch.long)
        data["class_names"] = list(dataset.classes)
    if len(data["class_names"]) != NUM_CLASSES:
        count = len(data["class_names"])
        raise UserInputError(f"{tv_dir}: batches.meta names {count} classes, CIFAR-10 has {NUM_CLASSES}")
    return data


def _read_source(source: FolderSource) -> dict[str, Any]:
    if source.kind == "torchvision":
        return _read_torchvision(source.path)
    return read_source(source, CIFAR10_SPEC, ARCHIVE_HINT)


def build_cifar10(cfg: DataConfig) -> DataSplits:
    """CIFAR-10 with the lineage's test normalization (trap T19); cached while the source is unchanged."""
    source = _find_source(require_root(cfg, LAYOUTS))
    path = cache_dir(cfg) / f"cifar10-{fingerprint(source.kind, source.path, source.stats)}.pt"
    data = load_cache(path, CACHE_KEYS)
    if data is None:
        data = _read_source(source)
        data["source"] = f"{source.kind}:{source.path.resolve()}"
        data["identity"] = content_identity("cifar10", data)
        save_cache(data, path)
    check_cached(data, path, CIFAR10_SPEC)
    if "identity" not in data:  # caches written before identities existed: computed now, in a second
        data["identity"] = content_identity("cifar10", data)
    return DataSplits(
        name="cifar10",
        train=TensorImageDataset(data["train_images"], data["train_labels"], CIFAR10_NORM),
        test=TensorImageDataset(data["test_images"], data["test_labels"], CIFAR10_NORM),
        num_classes=NUM_CLASSES,
        norm=CIFAR10_NORM,
        image_size=IMAGE_SIZE,
        class_names=list(data["class_names"]),
        identity=str(data["identity"]),
    )
