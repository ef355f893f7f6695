"""`image-folder`: any labelled image data set laid out as ImageFolder splits, decoded once to uint8 tensors.

A user's own data runs through the same pipeline as CIFAR-10: `train/<class>/*` plus `test/<class>/*` (or
`val/<class>/*`), as a folder or a .tar.gz of one. Image size, channel count (1 or 3) and class count are read
from the files unless the config fixes them; images of other sizes are an error unless `data.resize` is set.
The normalization is computed once from the train split (and cached with the pixels) unless `data.mean` /
`data.std` are given. CIFAR-10's reader (`intraq.data.cifar10`) is this one with its sizes and constants fixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass, replace
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

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
TEST_SPLIT_NAMES = ("test", "val")

# split -> class -> [(where, payload)], payload a file path or the encoded bytes read from an archive
ImageIndex = dict[str, dict[str, list[tuple[str, Path | bytes]]]]


@dataclass(frozen=True)
class FolderSpec:
    """What a folder data set must look like; None means "read it from the files"."""

    title: str  # the data set's name in messages
    num_classes: int | None = None
    image_size: int | None = None  # square side every image must have (after `resize`)
    channels: int | None = None  # 1 (grayscale) or 3 (RGB); None: 1 when every image is grayscale
    resize: int | None = None  # resize every image to this square side first
    test_names: tuple[str, ...] = TEST_SPLIT_NAMES  # the first that exists is the test split
    layouts: str = (
        "an ImageFolder tree with train/<class>/<image> and test/<class>/<image> (or val/<class>/<image>), "
        "the same class folders in both, as a folder or a .tar.gz of one"
    )
    hint: str = "point data.root at the data set"  # how to fix a data set that does not fit the spec
    preferred_archive: str | None = None  # the archive to take when a folder holds several


@dataclass(frozen=True)
class FolderSource:
    """What `data.root` turned out to be, the split names found, and the files that key the cache."""

    kind: str  # folder | archive
    path: Path
    test_name: str
    stats: list[FileStat]


def find_archive_or_tree(root: Path, spec: FolderSpec) -> FolderSource | None:
    """An archive file, a tree with train/ and a test split, or a folder holding exactly one such archive."""
    if root.is_file():
        if root.name.endswith(ARCHIVE_SUFFIXES):
            return FolderSource("archive", root, "", file_stats(root, [root]))
        raise UserInputError(
            f"data.root {str(root)!r} is a file but not a .tar.gz archive. Accepted layouts: {spec.layouts}"
        )
    test_name = next((name for name in spec.test_names if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_name is not None:
        splits = ("train", test_name)
        stats = [
            (f"{split}/{rel}", *rest) for split in splits for rel, *rest in tree_stats(root / split, is_image_name)
        ]
        return FolderSource("folder", root, test_name, stats)
    archives = sorted(
        p for p in root.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES) and not is_hidden(p.name)
    )
    preferred = [p for p in archives if p.name == spec.preferred_archive]
    if len(archives) > 1 and not preferred:
        raise UserInputError(
            f"data.root {str(root)!r} holds several archives ({', '.join(p.name for p in archives)}); "
            f"point data.root at the one holding the {spec.title} train/ and test/ tree"
        )
    if archives:
        archive = (preferred or archives)[0]
        return FolderSource("archive", archive, "", file_stats(archive, [archive]))
    return None


def locate(cfg: DataConfig, spec: FolderSpec) -> FolderSource:
    root = require_root(cfg, spec.layouts)
    source = find_archive_or_tree(root, spec)
    if source is None:
        raise UserInputError(
            f"data.root {str(root)!r} matches no {spec.title} layout; it holds: {describe_dir(root)}. "
            f"Accepted layouts: {spec.layouts}"
        )
    return source


def index_folder(source: FolderSource) -> ImageIndex:
    index: ImageIndex = {}
    for split, name in (("train", "train"), ("test", source.test_name)):
        split_dir = source.path / name
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not is_hidden(d.name))
        index[split] = {c: [(str(p), p) for p in walk_files(split_dir / c) if is_image_name(p.name)] for c in classes}
    return index


def index_archive(archive: Path, spec: FolderSpec, missing_hint: str = "") -> ImageIndex:
    """Reads the image members in one streaming pass; nothing is extracted to disk, so no path can escape."""
    split_of = {"train": "train", **{name: "test" for name in spec.test_names}}
    index: ImageIndex = {"train": {}, "test": {}}
    prefixes: set[tuple[str, ...]] = set()
    test_names: set[str] = set()
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
                    or parts[-3] not in split_of
                    or any(is_hidden(p) for p in parts)
                    or not is_image_name(parts[-1])
                ):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                prefixes.add(parts[:-3])
                if split_of[parts[-3]] == "test":
                    test_names.add(parts[-3])
                entry = (f"{archive}:{member.name}", handle.read())
                index[split_of[parts[-3]]].setdefault(parts[-2], []).append(entry)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserInputError(
            f"{archive} is not a readable tar archive ({type(exc).__name__}: {exc}); it is corrupt or "
            "truncated: download it again"
        ) from exc
    if len(prefixes) > 1 or len(test_names) > 1:
        tops = ", ".join("/".join(p) or "(top level)" for p in sorted(prefixes))
        raise UserInputError(f"{archive} holds several train/test trees ({tops}); expected exactly one")
    if not any(index.values()):
        raise UserInputError(
            f"{archive} holds no train/<class>/<image> or test/<class>/<image> files; its first entries: "
            f"{', '.join(seen) or 'none'}.{missing_hint}"
        )
    for classes in index.values():
        for items in classes.values():
            items.sort(key=lambda item: item[0])
    return {split: dict(sorted(classes.items())) for split, classes in index.items()}


def check_index(index: ImageIndex, where: Path, spec: FolderSpec) -> list[str]:
    """Class names (alphabetical, as ImageFolder orders them); errors on empty splits or a wrong class count."""
    for split in ("train", "test"):
        classes = index.get(split, {})
        if not classes or not any(classes.values()):
            raise UserInputError(f"{where}: split {split!r} has no images; expected {spec.layouts}")
        empty = [name for name, items in classes.items() if not items]
        if empty:
            raise UserInputError(f"{where}: class folder(s) {', '.join(empty)} in {split}/ hold no images")
        if spec.num_classes is not None and len(classes) != spec.num_classes:
            raise UserInputError(
                f"{where}: {split}/ has {len(classes)} class folders ({', '.join(classes)}), {spec.title} needs "
                f"{spec.num_classes}; {spec.hint}"
            )
    if list(index["train"]) != list(index["test"]):
        raise UserInputError(
            f"{where}: train/ and test/ have different class folders ({', '.join(index['train'])} vs "
            f"{', '.join(index['test'])}); they must be the same"
        )
    return list(index["train"])


def decode_image(payload: Path | bytes, where: str, spec: FolderSpec, mode: str) -> np.ndarray:
    """One image as (H, W, C) uint8 in `mode` (L or RGB), resized or checked for size; errors name the file."""
    try:
        with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as image:
            if spec.resize is not None and image.size != (spec.resize, spec.resize):
                image = image.convert(mode).resize((spec.resize, spec.resize), Image.BILINEAR)
            side = spec.image_size
            if side is not None and image.size != (side, side):
                width, height = image.size
                raise UserInputError(
                    f"{where} is {width}x{height}, but {spec.title} images are {side}x{side}: {spec.hint}, "
                    "or set data.resize=SIDE to resize every image"
                )
            array = np.asarray(image.convert(mode))
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(f"{where} is not a readable image ({exc}); remove or replace it") from exc
    return array[:, :, None] if array.ndim == 2 else array


def _probe(payload: Path | bytes) -> tuple[tuple[int, int], str]:
    with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as image:
        return image.size, image.mode


def _shape_of(index: ImageIndex, spec: FolderSpec, where: Path) -> tuple[int, int]:
    """(side, channels) of the decoded images: from the spec, else from the first image and the modes."""
    items = [item for classes in index.values() for entries in classes.values() for item in entries]
    first_where, first = items[0]
    try:
        (width, height), _ = _probe(first)
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(f"{first_where} is not a readable image ({exc}); remove or replace it") from exc
    side = spec.resize or spec.image_size or width
    if spec.resize is None and spec.image_size is None and width != height:
        raise UserInputError(
            f"{first_where} is {width}x{height}: images must be square; set data.resize=SIDE to resize them"
        )
    channels = spec.channels
    if channels is None:
        grey = all(_probe(payload)[1] in ("1", "L", "I;16", "I") for _, payload in items)
        channels = 1 if grey else 3
    if channels not in (1, 3):
        raise UserInputError(f"{where}: data.channels must be 1 or 3, got {channels}")
    return side, channels


def decode_index(index: ImageIndex, where: Path, spec: FolderSpec) -> dict[str, Any]:
    """uint8 (N, C, S, S) tensors and int64 labels for both splits, with the class names."""
    class_names = check_index(index, where, spec)
    side, channels = _shape_of(index, spec, where)
    spec = replace(spec, image_size=side)
    mode = "L" if channels == 1 else "RGB"
    total = sum(len(items) for classes in index.values() for items in classes.values())
    data: dict[str, Any] = {"class_names": class_names}
    with tqdm(total=total, desc=f"decoding {spec.title} from {where.name}", unit="img") as bar:
        for split in ("train", "test"):
            items = [(label, item) for label, name in enumerate(class_names) for item in index[split][name]]
            images = np.empty((len(items), side, side, channels), dtype=np.uint8)
            for i, (_, (item_where, payload)) in enumerate(items):
                images[i] = decode_image(payload, item_where, spec, mode)
                bar.update(1)
            data[f"{split}_images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            data[f"{split}_labels"] = torch.tensor([label for label, _ in items], dtype=torch.long)
    return data


def read_source(source: FolderSource, spec: FolderSpec, missing_hint: str = "") -> dict[str, Any]:
    if source.kind == "archive":
        return decode_index(index_archive(source.path, spec, missing_hint), source.path, spec)
    return decode_index(index_folder(source), source.path, spec)


def content_identity(name: str, data: dict[str, Any]) -> str:
    """A data set's identity: its name plus a hash of its decoded pixels, labels and class names.

    Independent of where the files live and of their timestamps, so two copies of one data set share it and
    two different data sets never do; computed once when the cache is written."""
    digest = hashlib.sha256(json.dumps([name, list(data["class_names"])]).encode())
    for key in CACHE_KEYS:
        tensor = data[key].contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{name}-{digest.hexdigest()[:16]}"


def tree_identity(name: str, files: list[tuple[str, int]]) -> str:
    """The identity of a data set read lazily (ImageNet): its name plus a hash of its file list and sizes."""
    blob = json.dumps([name, sorted(files)], separators=(",", ":"))
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def train_normalization(images: torch.Tensor) -> Normalization:
    """Per-channel mean and std of the train split in [0, 1], accumulated in float64 chunks (no big copy)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].double() / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        squares += (chunk * chunk).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt() * (count / max(count - 1, 1)) ** 0.5
    if bool((std <= 0).any()):
        raise UserInputError("the train split has a constant channel (std 0); set data.mean and data.std explicitly")
    return Normalization(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


def check_cached(data: dict[str, Any], path: Path, spec: FolderSpec) -> None:
    """A cache with the right keys but inconsistent shapes is as unusable as a corrupt one."""
    names = data.get("class_names")
    ok = isinstance(names, list) and len(names) > 0
    ok = ok and (spec.num_classes is None or len(names) == spec.num_classes)
    shapes = set()
    for split in ("train", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        ok = ok and images.dtype == torch.uint8 and images.dim() == 4 and len(images) > 0
        ok = ok and labels.shape == (len(images),) and int(labels.min()) >= 0 and int(labels.max()) < len(names or [])
        shapes.add(tuple(images.shape[1:]))
    ok = ok and len(shapes) == 1
    if ok and spec.image_size is not None:
        ok = next(iter(shapes))[1:] == (spec.image_size, spec.image_size)
    if not ok:
        raise UserInputError(
            f"{path} does not hold {spec.title} tensors; delete it and the run will decode the data again"
        )


def spec_from_config(cfg: DataConfig) -> FolderSpec:
    return FolderSpec(
        title=cfg.name, num_classes=cfg.num_classes, image_size=None, channels=cfg.channels, resize=cfg.resize,
        hint="check data.root, or set data.resize / data.num_classes to match your data",
    )


def build_image_folder(cfg: DataConfig) -> DataSplits:
    """A user's ImageFolder data set under the name `data.name`; decoded once and cached while unchanged."""
    spec = spec_from_config(cfg)
    source = locate(cfg, spec)
    key = fingerprint(f"{source.kind}:{spec.num_classes}:{spec.channels}:{spec.resize}", source.path, source.stats)
    path = cache_dir(cfg) / f"{cfg.name}-{key}.pt"
    data = load_cache(path, CACHE_KEYS)
    if data is None:
        data = read_source(source, spec)
        data["source"] = f"{source.kind}:{source.path.resolve()}"
        data["identity"] = content_identity(cfg.name, data)
        norm = train_normalization(data["train_images"])
        data["train_mean"], data["train_std"] = list(norm.mean), list(norm.std)
        save_cache(data, path)
    check_cached(data, path, spec)
    channels = int(data["train_images"].shape[1])
    if (cfg.mean is None) != (cfg.std is None):
        raise UserInputError("set both data.mean and data.std, or neither (then both come from the train split)")
    if cfg.mean is not None:
        norm = Normalization(mean=tuple(cfg.mean), std=tuple(cfg.std))
    else:
        norm = Normalization(mean=tuple(data["train_mean"]), std=tuple(data["train_std"]))
    if len(norm.mean) != channels or len(norm.std) != channels:
        raise UserInputError(
            f"data.mean/data.std have {len(norm.mean)}/{len(norm.std)} values but the images have {channels} channels"
        )
    return DataSplits(
        name=cfg.name,
        train=TensorImageDataset(data["train_images"], data["train_labels"], norm),
        test=TensorImageDataset(data["test_images"], data["test_labels"], norm),
        num_classes=len(data["class_names"]),
        norm=norm,
        image_size=int(data["train_images"].shape[-1]),
        channels=channels,
        class_names=list(data["class_names"]),
        identity=str(data["identity"]),
    )
