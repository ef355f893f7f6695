"""CIFAR-10 and ImageNet loaders on tiny trees made here: each layout, the cache, each user error."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import intraq.data.image_folder as image_folder
from intraq.config import DataConfig
from intraq.data import build_data
from intraq.data.base import TensorImageDataset
from intraq.data.cifar10 import (
    CIFAR10_NORM,
    IMGCLSMOB_CIFAR_NORM,
    LINEAGE_CIFAR10_NORM,
    build_cifar10,
)
from intraq.data.imagenet import IMAGENET_NORM, build_imagenet
from intraq.errors import UserInputError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REAL_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"


def _image(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A random (H, W, 3) uint8 image; size is (width, height) as PIL counts it."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _make_tree(
    root: Path,
    classes: list[str] = CLASSES,
    per_class: int = 2,
    splits: tuple[str, ...] = ("train", "test"),
    ext: str = "png",
) -> dict[str, list[tuple[np.ndarray, int]]]:
    """split/<class>/<i>.<ext> files; returns the pixels per split in ImageFolder order."""
    written: dict[str, list[tuple[np.ndarray, int]]] = {}
    seed = 0
    for split in splits:
        written[split] = []
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                seed += 1
                array = _image(seed)
                (folder / f"{i:04d}.{ext}").write_bytes(_encode(array, "PNG" if ext == "png" else "JPEG"))
                written[split].append((array, label))
    return written


def _cfg(root: Path | str | None, cache: Path) -> DataConfig:
    return DataConfig(name="cifar10", root=None if root is None else str(root), cache_dir=str(cache))


def _check_splits(splits, n_train: int, n_test: int) -> None:
    assert splits.name == "cifar10" and splits.num_classes == 10 and splits.image_size == 32
    assert splits.class_names == CLASSES
    assert splits.norm == LINEAGE_CIFAR10_NORM
    assert isinstance(splits.train, TensorImageDataset) and isinstance(splits.test, TensorImageDataset)
    assert splits.train.images.shape == (n_train, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert splits.test.images.shape == (n_test, 3, 32, 32)
    image, label = splits.test[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and 0 <= label < 10


# ------------------------------------------------------------ normalization


def test_normalization_constants_are_the_lineage_ones_not_imgclsmobs():
    assert CIFAR10_NORM.mean == (0.49139968, 0.48215827, 0.44653124)
    assert CIFAR10_NORM.std == (0.24703233, 0.24348505, 0.26158768)
    assert IMGCLSMOB_CIFAR_NORM.std == (0.2023, 0.1994, 0.2010)  # trap T19: the other one, kept by name only


# ------------------------------------------------------------ (a) torchvision


def _write_torchvision(folder: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """cifar-10-batches-py as torchvision reads it: pickled dicts with 'data' (N, 3072) and 'labels'."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, handle)
        arrays[name] = data
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch}, handle)
    return arrays


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test batches cannot match the real files' md5s; torchvision checks them through this one function."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.mark.parametrize("point_at_batches", [False, True])
def test_torchvision_layout(tmp_path: Path, skip_md5: None, point_at_batches: bool):
    arrays = _write_torchvision(tmp_path / "data" / "cifar-10-batches-py")
    root = tmp_path / "data" / ("cifar-10-batches-py" if point_at_batches else "")
    splits = build_cifar10(_cfg(root, tmp_path / "cache"))
    _check_splits(splits, n_train=15, n_test=3)
    expected = torch.from_numpy(arrays["data_batch_1"]).view(-1, 3, 32, 32)
    assert torch.equal(splits.train.images[:3], expected)
    assert torch.equal(splits.test.images, torch.from_numpy(arrays["test_batch"]).view(-1, 3, 32, 32))


def test_torchvision_layout_failing_md5_is_a_user_error(tmp_path: Path):
    _write_torchvision(tmp_path / "cifar-10-batches-py")
    with pytest.raises(UserInputError, match="cifar-10-batches-py.*md5"):
        build_cifar10(_cfg(tmp_path, tmp_path / "cache"))


def test_torchvision_layout_missing_batch_named(tmp_path: Path):
    _write_torchvision(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserInputError, match="lacks test_batch"):
        build_cifar10(_cfg(tmp_path, tmp_path / "cache"))


# ------------------------------------------------------------ (b) ImageFolder


def test_imagefolder_layout_pixels_and_labels(tmp_path: Path):
    written = _make_tree(tmp_path / "cifar")
    (tmp_path / "cifar" / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden files are skipped
    splits = build_cifar10(_cfg(tmp_path / "cifar", tmp_path / "cache"))
    _check_splits(splits, n_train=20, n_test=20)
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        expected = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a, _ in written[split]])
        assert torch.equal(dataset.images, expected)  # PNG is lossless
        assert dataset.labels.tolist() == [label for _, label in written[split]]
    images, labels = splits.train.batch(slice(0, 4))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1]


def test_build_data_registry_finds_cifar10(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1)
    assert build_data(_cfg(tmp_path / "cifar", tmp_path / "cache")).name == "cifar10"


def test_default_cache_dir_is_under_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _make_tree(tmp_path / "cifar", per_class=1)
    monkeypatch.setenv("INTRAQ_ARTIFACTS", str(tmp_path / "art"))
    build_cifar10(DataConfig(name="cifar10", root=str(tmp_path / "cifar")))
    assert len(list((tmp_path / "art" / "cache").glob("cifar10-*.pt"))) == 1


# ------------------------------------------------------------ (c) archive


def _make_archive(path: Path, tree: Path, top: str | None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=f"{top}/{split}" if top else split)


@pytest.mark.parametrize("top", [None, "cifar10"])
def test_archive_layout(tmp_path: Path, top: str | None):
    _make_tree(tmp_path / "tree", ext="jpg")
    (tmp_path / "tree" / "train" / "dog" / "._0000.jpg").write_bytes(b"macOS fork")  # skipped
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    _make_archive(archive, tmp_path / "tree", top)
    splits = build_cifar10(_cfg(archive, tmp_path / "cache"))
    _check_splits(splits, n_train=20, n_test=20)
    assert splits.train.labels.bincount().tolist() == [2] * 10
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())  # nothing extracted to disk


def test_a_folder_holding_the_archive_is_accepted(tmp_path: Path):
    _make_tree(tmp_path / "tree", ext="jpg")
    folder = tmp_path / "downloads"
    folder.mkdir()
    _make_archive(folder / "cifar10-jpeg.tar.gz", tmp_path / "tree", None)
    (folder / "notes.txt").write_text("not data")
    _check_splits(build_cifar10(_cfg(folder, tmp_path / "cache")), n_train=20, n_test=20)
    _make_archive(folder / "other.tgz", tmp_path / "tree", None)  # the CIFAR-10 name still wins
    _check_splits(build_cifar10(_cfg(folder, tmp_path / "cache")), n_train=20, n_test=20)
    (folder / "cifar10-jpeg.tar.gz").rename(folder / "copy.tar.gz")
    with pytest.raises(UserInputError, match="several archives.*copy.tar.gz, other.tgz"):
        build_cifar10(_cfg(folder, tmp_path / "cache"))


def test_archive_without_cifar_tree_lists_its_entries(tmp_path: Path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(UserInputError, match="other.tar.gz.*cifar-10-batches-py/data_batch_1"):
        build_cifar10(_cfg(archive, tmp_path / "cache"))


def test_truncated_archive_is_a_user_error(tmp_path: Path):
    _make_tree(tmp_path / "tree", per_class=1, ext="jpg")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    _make_archive(archive, tmp_path / "tree", None)
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(UserInputError, match="cifar10-jpeg.tar.gz.*download it again"):
        build_cifar10(_cfg(archive, tmp_path / "cache"))


# ------------------------------------------------------------ cache


def _fail_decode(*args, **kwargs):
    raise AssertionError("decoded again instead of loading the cache")


def test_cache_is_reused_and_keyed_on_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _make_tree(tmp_path / "cifar", per_class=1)
    cfg = _cfg(tmp_path / "cifar", tmp_path / "cache")
    first = build_cifar10(cfg)
    (cache_file,) = (tmp_path / "cache").glob("cifar10-*.pt")
    with monkeypatch.context() as patch:
        patch.setattr(image_folder, "decode_image", _fail_decode)
        second = build_cifar10(cfg)
    assert torch.equal(first.train.images, second.train.images)
    # A changed source (a new file here) must not reuse the old cache.
    Image.fromarray(_image(99)).save(tmp_path / "cifar" / "train" / "cat" / "extra.png")
    third = build_cifar10(cfg)
    assert len(third.train) == len(first.train) + 1
    assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 2 and cache_file.exists()


def test_cache_sees_a_file_rewritten_in_place(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1)
    cfg = _cfg(tmp_path / "cifar", tmp_path / "cache")
    build_cifar10(cfg)
    target = tmp_path / "cifar" / "test" / "bird" / "0000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert int(build_cifar10(cfg).test.images[2].sum()) == 0


def test_corrupt_cache_names_the_file_and_says_delete(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1)
    cfg = _cfg(tmp_path / "cifar", tmp_path / "cache")
    build_cifar10(cfg)
    (cache_file,) = (tmp_path / "cache").glob("cifar10-*.pt")
    cache_file.write_bytes(b"not a torch file")
    with pytest.raises(UserInputError, match=f"(?s){cache_file.name}.*delete it"):
        build_cifar10(cfg)


def test_foreign_torch_file_as_cache_says_delete(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1)
    cfg = _cfg(tmp_path / "cifar", tmp_path / "cache")
    build_cifar10(cfg)
    (cache_file,) = (tmp_path / "cache").glob("cifar10-*.pt")
    torch.save({"weights": torch.zeros(3)}, cache_file)
    with pytest.raises(UserInputError, match=f"(?s){cache_file.name}.*delete it"):
        build_cifar10(cfg)


# ------------------------------------------------------------ cifar10 errors


def test_root_not_set_says_how(tmp_path: Path):
    with pytest.raises(UserInputError, match=r"data\.root=PATH.*--data-root.*cifar-10-batches-py.*tar\.gz"):
        build_cifar10(_cfg(None, tmp_path / "cache"))


def test_missing_root_named(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserInputError, match=f"{missing}.*does not exist"):
        build_cifar10(_cfg(missing, tmp_path / "cache"))


def test_root_matching_no_layout_lists_what_is_there(tmp_path: Path):
    (tmp_path / "stuff" / "images").mkdir(parents=True)
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match=r"stuff.*matches no CIFAR-10 layout.*images/, notes\.txt"):
        build_cifar10(_cfg(tmp_path / "stuff", tmp_path / "cache"))


def test_plain_file_root_is_rejected(tmp_path: Path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(UserInputError, match=r"data\.zip.*not a \.tar\.gz"):
        build_cifar10(_cfg(tmp_path / "data.zip", tmp_path / "cache"))


def test_wrong_class_count(tmp_path: Path):
    _make_tree(tmp_path / "cifar", classes=CLASSES[:9], per_class=1)
    with pytest.raises(UserInputError, match=r"cifar.*train/ has 9 class folders.*needs 10"):
        build_cifar10(_cfg(tmp_path / "cifar", tmp_path / "cache"))


def test_image_not_32x32_names_the_file(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1)
    big = tmp_path / "cifar" / "test" / "frog" / "big.png"
    Image.fromarray(_image(7, size=(64, 48))).save(big)
    with pytest.raises(UserInputError, match=f"{big}.*64x48.*32x32"):
        build_cifar10(_cfg(tmp_path / "cifar", tmp_path / "cache"))


def test_unreadable_image_names_the_file(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1)
    bad = tmp_path / "cifar" / "train" / "ship" / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserInputError, match=f"{bad}.*not a readable image"):
        build_cifar10(_cfg(tmp_path / "cifar", tmp_path / "cache"))


def test_empty_split(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1, splits=("train",))
    (tmp_path / "cifar" / "test").mkdir()
    with pytest.raises(UserInputError, match="split 'test' has no images"):
        build_cifar10(_cfg(tmp_path / "cifar", tmp_path / "cache"))


def test_empty_class_folder(tmp_path: Path):
    _make_tree(tmp_path / "cifar", per_class=1)
    for image in (tmp_path / "cifar" / "test" / "deer").iterdir():
        image.unlink()
    with pytest.raises(UserInputError, match=r"deer in test/ hold no images"):
        build_cifar10(_cfg(tmp_path / "cifar", tmp_path / "cache"))


# ------------------------------------------------------------ imagenet


def _make_imagenet(root: Path, classes: tuple[str, ...] = ("n01", "n02", "n03"), val_classes=None) -> None:
    seed = 0
    for split, names, count in (("train", classes, 2), ("val", val_classes or classes, 1)):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                seed += 1
                Image.fromarray(_image(seed, size=(40, 50))).save(root / split / name / f"{i}.JPEG")


def _imagenet_cfg(root: Path | None) -> DataConfig:
    return DataConfig(name="imagenet", root=None if root is None else str(root))


def test_imagenet_tiny_tree(tmp_path: Path):
    _make_imagenet(tmp_path / "inet")
    (tmp_path / "inet" / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    splits = build_imagenet(_imagenet_cfg(tmp_path / "inet"))
    assert splits.num_classes == 3 and splits.image_size == 224 and splits.class_names == ["n01", "n02", "n03"]
    assert splits.norm == IMAGENET_NORM and len(splits.train) == 6 and len(splits.test) == 3
    image, label = splits.test[2]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 2
    assert float(image.min()) < 0 and float(image.max()) > 1  # normalized, not [0, 1]


def test_imagenet_errors_name_the_path(tmp_path: Path):
    with pytest.raises(UserInputError, match=r"data\.root=PATH.*--data-root"):
        build_imagenet(_imagenet_cfg(None))
    with pytest.raises(UserInputError, match=f"{tmp_path / 'nope'}.*does not exist"):
        build_imagenet(_imagenet_cfg(tmp_path / "nope"))
    (tmp_path / "only_train" / "train" / "n01").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"only_train has no val/ folder.*holds: train/"):
        build_imagenet(_imagenet_cfg(tmp_path / "only_train"))


def test_imagenet_flat_val_folder(tmp_path: Path):
    _make_imagenet(tmp_path / "inet")
    Image.fromarray(_image(1, size=(40, 50))).save(tmp_path / "inet" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(UserInputError, match="val holds images directly"):
        build_imagenet(_imagenet_cfg(tmp_path / "inet"))


def test_imagenet_class_mismatch(tmp_path: Path):
    _make_imagenet(tmp_path / "inet", val_classes=("n01", "n02", "n09"))
    with pytest.raises(UserInputError, match="only in train: n03; only in val: n09"):
        build_imagenet(_imagenet_cfg(tmp_path / "inet"))


def test_imagenet_no_images(tmp_path: Path):
    for split in ("train", "val"):
        (tmp_path / "inet" / split / "n01").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"train: no images found"):
        build_imagenet(_imagenet_cfg(tmp_path / "inet"))


# ------------------------------------------------------------ real archive


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason=f"{REAL_ARCHIVE} not present")
def test_real_cifar10_jpeg_archive(tmp_path: Path):
    splits = build_cifar10(_cfg(REAL_ARCHIVE, tmp_path / "cache"))
    assert len(splits.train) == 50_000 and len(splits.test) == 10_000
    assert splits.num_classes == 10 and splits.class_names == CLASSES
    assert splits.train.labels.bincount().tolist() == [5000] * 10
    assert splits.test.labels.bincount().tolist() == [1000] * 10


def test_a_tensor_data_set_moves_to_a_device_whole_and_stays_put_when_already_there():
    from intraq.data.base import Normalization, TensorImageDataset

    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    data = TensorImageDataset(images, torch.arange(6), Normalization((0.5,) * 3, (0.25,) * 3))
    assert data.to(torch.device("cpu")) is data
    moved = data.to(torch.device("meta"))  # any other device: a new data set with both tensors there
    assert moved.images.device.type == moved.labels.device.type == "meta" and moved.norm == data.norm
    assert data.images.device.type == "cpu" and len(moved) == 6
