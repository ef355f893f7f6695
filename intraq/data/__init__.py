"""Data sets by name: `build_data(DataConfig)` returns a `DataSplits`."""

from __future__ import annotations

from collections.abc import Callable

from intraq.config import DataConfig
from intraq.data.base import DataSplits, Normalization, TensorImageDataset
from intraq.data.digits import build_digits
from intraq.registry import Registry

DATASETS: Registry[Callable[[DataConfig], DataSplits]] = Registry("data set")
DATASETS.register("digits")(build_digits)


def _register_optional() -> None:
    # cifar10 and imagenet live in their own modules; imported lazily so digits needs nothing else.
    from intraq.data.cifar10 import build_cifar10
    from intraq.data.image_folder import build_image_folder
    from intraq.data.imagenet import build_imagenet

    DATASETS.register("cifar10")(build_cifar10)
    DATASETS.register("imagenet")(build_imagenet)
    DATASETS.register("image-folder")(build_image_folder)


def build_data(cfg: DataConfig) -> DataSplits:
    """The splits of data set `cfg.name` read by `cfg.loader` (default: the reader of that name); fails at once,
    naming the fix, on an unknown reader or a bad path."""
    if "cifar10" not in DATASETS:
        _register_optional()
    return DATASETS.get(cfg.loader or cfg.name)(cfg)


__all__ = ["DATASETS", "DataSplits", "Normalization", "TensorImageDataset", "build_data"]
