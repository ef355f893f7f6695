"""Penultimate (global-pool) features by module name: what MDC, ADI and the UMAP figures look at."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def feature_module_name(model: nn.Module) -> str:
    """Every teacher names its global-pool module in `feature_module_name`."""
    name = getattr(model, "feature_module_name", None)
    if name is None:
        raise AttributeError(f"{type(model).__name__} does not declare feature_module_name")
    return name


class FeatureTap:
    """Holds the last output of the model's feature module, flattened to (B, D)."""

    def __init__(self) -> None:
        self.features: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.features = output.flatten(1)


@contextmanager
def tap_features(model: nn.Module) -> Iterator[FeatureTap]:
    """`with tap_features(model) as tap: logits = model(x); f = tap.features`."""
    tap = FeatureTap()
    handle = model.get_submodule(feature_module_name(model)).register_forward_hook(tap)
    try:
        yield tap
    finally:
        handle.remove()


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with tap_features(model) as tap:
        logits = model(x)
    assert tap.features is not None
    return logits, tap.features


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features of `images` (eval mode, no grad), batch by batch, on the model's device."""
    device = next(model.parameters()).device
    chunks = []
    with tap_features(model) as tap:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size].to(device))
            chunks.append(tap.features.float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)
