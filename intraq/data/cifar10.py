"""`cifar10`: CIFAR-10 from torchvision's folder, an ImageFolder tree or the JPEG archive, decoded once.

Images are decoded to uint8 (N, 3, 32, 32) a single time and saved under
<cache_dir>/cifar10-<fingerprint>.pt; later builds only stat the source and load that file.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from intraq.config import DataConfig
from intraq.data.base import DataSplits, Normalization, TensorImageDataset
from intraq.data.cache import (
    FileStat,
    cache_dir,
    describe_dir,
    file_stats,
    fingerprint,
    is_hidden,
    is_image_name,
    load_cache,
    require_root,
    save_cache,
    tree_stats,
    walk_files,
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
CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
LAYOUTS = (
    f"(a) torchvision's CIFAR-10 folder: a folder holding {TV_FOLDER}/ (or {TV_FOLDER} itself); "
    "(b) an ImageFolder tree with train/<class>/*.jpg and test/<class>/*.jpg, 10 class folders each; "
    "(c) the archive cifar10-jpeg.tar.gz holding such a tree, or a folder holding that archive"
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
PREFERRED_ARCHIVE = "cifar10-jpeg.tar.gz"

# split -> class -> [(where, payload)], payload a file path or the encoded bytes read from an archive
ImageIndex = dict[str, dict[str, list[tuple[str, Path | bytes]]]]


@dataclass(frozen=True)
class _Source:
    """What `data.root` turned out to be, and the size/mtime of the files that key the cache."""

    kind: str  # torchvision | folder | archive
    path: Path
    stats: list[FileStat]


def _find_source(root: Path) -> _Source:
    if root.is_file():
        if root.name.endswith(ARCHIVE_SUFFIXES):
            return _Source("archive", root, file_stats(root, [root]))
        raise UserInputError(
            f"data.root {str(root)!r} is a file but not a .tar.gz archive. Accepted layouts: {LAYOUTS}"
        )
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
            return _Source("torchvision", tv_dir, file_stats(tv_dir, [tv_dir / name for name in TV_FILES]))
    if all((root / split).is_dir() for split in SPLITS):
        stats = [
            (f"{split}/{rel}", *rest) for split in SPLITS for rel, *rest in tree_stats(root / split, is_image_name)
        ]
        return _Source("folder", root, stats)
    archive = _archive_in(root)
    if archive is not None:
        return _Source("archive", archive, file_stats(archive, [archive]))
    raise UserInputError(
        f"data.root {str(root)!r} matches no CIFAR-10 layout; it holds: {describe_dir(root)}. "
        f"Accepted layouts: {LAYOUTS}"
    )


def _archive_in(folder: Path) -> Path | None:
    """The archive a folder holds (layout c given as its folder): cifar10-jpeg.tar.gz, else its only archive."""
    archives = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES)
                      and not is_hidden(p.name))
    if not archives:
        return None
    preferred = [p for p in archives if p.name == PREFERRED_ARCHIVE]
    if preferred:
        return preferred[0]
    if len(archives) > 1:
        raise UserInputError(
            f"data.root {str(folder)!r} holds several archives ({', '.join(p.name for p in archives)}); "
            "point data.root at the one holding CIFAR-10's train/ and test/ tree"
        )
    return archives[0]


def decode_image(payload: Path | bytes, where: str) -> np.ndarray:
    """One 32x32 image as (32, 32, 3) uint8 RGB; anything else is an error naming the file."""
    try:
        with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                width, height = image.size
                raise UserInputError(
                    f"{where} is {width}x{height}, but CIFAR-10 images are {IMAGE_SIZE}x{IMAGE_SIZE}: "
                    "this is not CIFAR-10 data; remove the file or point data.root at CIFAR-10"
                )
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(f"{where} is not a readable image ({exc}); remove or replace it") from exc


def _index_folder(root: Path) -> ImageIndex:
    index: ImageIndex = {}
    for split in SPLITS:
        split_dir = root / split
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not is_hidden(d.name))
        index[split] = {}
        for name in classes:
            index[split][name] = [(str(p), p) for p in walk_files(split_dir / name) if is_image_name(p.name)]
    return index


def _index_archive(archive: Path) -> ImageIndex:
    """Reads the image members in one streaming pass; nothing is extracted to disk, so no path can escape."""
    index: ImageIndex = {split: {} for split in SPLITS}
    prefixes: set[tuple[str, ...]] = set()
    seen: list[str] = []
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                if len(seen) < 12:
                    seen.append(member.name + ("/" if member.isdir() else ""))
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in ("", ".", "/"))
                if (
                    not member.isfile()
                    or len(parts) < 3
                    or parts[-3] not in SPLITS
                    or any(is_hidden(p) for p in parts)
                    or not is_image_name(parts[-1])
                ):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                prefixes.add(parts[:-3])
                index[parts[-3]].setdefault(parts[-2], []).append((f"{archive}:{member.name}", handle.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserInputError(
            f"{archive} is not a readable tar archive ({type(exc).__name__}: {exc}); it is corrupt or "
            "truncated: download it again"
        ) from exc
    if len(prefixes) > 1:
        tops = ", ".join("/".join(p) or "(top level)" for p in sorted(prefixes))
        raise UserInputError(f"{archive} holds several train/test trees ({tops}); expected exactly one")
    if not any(index.values()):
        raise UserInputError(
            f"{archive} holds no train/<class>/<image> or test/<class>/<image> files; its first entries: "
            f"{', '.join(seen) or 'none'}. Expected cifar10-jpeg.tar.gz; for torchvision's "
            f"cifar-10-python.tar.gz, unpack it and point data.root at the folder holding {TV_FOLDER}/"
        )
    for classes in index.values():
        for items in classes.values():
            items.sort(key=lambda item: item[0])
    return {split: dict(sorted(classes.items())) for split, classes in index.items()}


def _check_index(index: ImageIndex, where: Path) -> list[str]:
    """Class names (alphabetical, so CIFAR order); errors on missing/empty splits or a wrong class count."""
    for split in SPLITS:
        classes = index.get(split, {})
        if not classes or not any(classes.values()):
            raise UserInputError(
                f"{where}: split {split!r} has no images; expected {split}/<class>/*.jpg for {NUM_CLASSES} classes"
            )
        empty = [name for name, items in classes.items() if not items]
        if empty:
            raise UserInputError(f"{where}: class folder(s) {', '.join(empty)} in {split}/ hold no images")
        if len(classes) != NUM_CLASSES:
            raise UserInputError(
                f"{where}: {split}/ has {len(classes)} class folders ({', '.join(classes)}), CIFAR-10 needs "
                f"{NUM_CLASSES}; point data.root at CIFAR-10"
            )
    if list(index["train"]) != list(index["test"]):
        raise UserInputError(
            f"{where}: train/ and test/ have different class folders ({', '.join(index['train'])} vs "
            f"{', '.join(index['test'])}); they must be the same {NUM_CLASSES}"
        )
    return list(index["train"])


def _decode_index(index: ImageIndex, where: Path) -> dict[str, Any]:
    class_names = _check_index(index, where)
    total = sum(len(items) for classes in index.values() for items in classes.values())
    data: dict[str, Any] = {"class_names": class_names}
    with tqdm(total=total, desc=f"decoding CIFAR-10 from {where.name}", unit="img") as bar:
        for split in SPLITS:
            items = [(label, item) for label, name in enumerate(class_names) for item in index[split][name]]
            images = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            for i, (_, (item_where, payload)) in enumerate(items):
                images[i] = decode_image(payload, item_where)
                bar.update(1)
            data[f"{split}_images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            data[f"{split}_labels"] = torch.tensor([label for label, _ in items], dtype=torch.long)
    return data


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


def _read_source(source: _Source) -> dict[str, Any]:
    if source.kind == "torchvision":
        return _read_torchvision(source.path)
    if source.kind == "archive":
        return _decode_index(_index_archive(source.path), source.path)
    return _decode_index(_index_folder(source.path), source.path)


def _check_data(data: dict[str, Any], path: Path) -> None:
    """A cache with the right keys but wrong shapes is as unusable as a corrupt one."""
    names = data.get("class_names")
    ok = isinstance(names, list) and len(names) == NUM_CLASSES
    for split in SPLITS:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        ok = ok and images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, IMAGE_SIZE, IMAGE_SIZE)
        ok = ok and len(images) > 0 and labels.shape == (len(images),)
        ok = ok and int(labels.min()) >= 0 and int(labels.max()) < NUM_CLASSES
    if not ok:
        raise UserInputError(f"{path} does not hold CIFAR-10 tensors; delete it and the run will decode the data again")


def build_cifar10(cfg: DataConfig) -> DataSplits:
    """CIFAR-10 with the lineage's test normalization (trap T19); cached while the source is unchanged."""
    source = _find_source(require_root(cfg, LAYOUTS))
    path = cache_dir(cfg) / f"cifar10-{fingerprint(source.kind, source.path, source.stats)}.pt"
    data = load_cache(path, CACHE_KEYS)
    if data is None:
        data = _read_source(source)
        data["source"] = f"{source.kind}:{source.path.resolve()}"
        save_cache(data, path)
    _check_data(data, path)
    return DataSplits(
        name="cifar10",
        train=TensorImageDataset(data["train_images"], data["train_labels"], CIFAR10_NORM),
        test=TensorImageDataset(data["test_images"], data["test_labels"], CIFAR10_NORM),
        num_classes=NUM_CLASSES,
        norm=CIFAR10_NORM,
        image_size=IMAGE_SIZE,
        class_names=list(data["class_names"]),
    )
