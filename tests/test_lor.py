"""Local Object Reinforcement: batched, differentiable crop / flip / rotation with seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

from intraq.synthesis.lor import (
    LOR_VARIANTS,
    LORParams,
    LORSettings,
    apply_lor,
    lor_ops,
    lor_theta,
    sample_crop_boxes,
    sample_lor_params,
    sample_lor_schedule,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _identity(n: int, side: int) -> LORParams:
    return LORParams(
        boxes=torch.tensor([[0, 0, side, side]]).expand(n, 4).clone(),
        flips=torch.zeros(n, dtype=torch.bool),
        angles=torch.zeros(n, dtype=torch.float64),
    )


@pytest.mark.parametrize(
    ("height", "width", "scale"), [(16, 16, (0.5, 1.0)), (32, 32, (0.08, 1.0)), (224, 224, (0.5, 1.0))]
)
def test_crop_boxes_stay_inside_the_image(height: int, width: int, scale: tuple[float, float]) -> None:
    boxes = sample_crop_boxes(20000, height, width, scale, (3 / 4, 4 / 3), _gen())
    top, left, h, w = boxes.unbind(1)
    assert torch.all(top >= 0) and torch.all(left >= 0)
    assert torch.all(h >= 1) and torch.all(w >= 1)
    assert torch.all(top + h <= height) and torch.all(left + w <= width)
    area = (h * w).double() / (height * width)
    assert area.min() > scale[0] * 0.7 and area.max() <= 1.0
    assert len(torch.unique(top)) > 1 and len(torch.unique(left)) > 1  # positions vary


def test_identity_box_reproduces_the_input() -> None:
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(apply_lor(x, _identity(4, 16)), x, atol=1e-5)


def test_crop_and_flip_equal_torchvision_crop_then_resize_everywhere() -> None:
    """Every pixel, the crop border included: no sample reads outside the box (issue 16, item 7)."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.randn(64, 3, 32, 32)
    params = sample_lor_params(64, 32, 32, LORSettings.from_variant("L+F", 0.5, 0.0), _gen(11))
    out = apply_lor(x, params)
    for i in range(64):
        top, left, h, w = (int(v) for v in params.boxes[i])
        ref = TF.resized_crop(x[i], top, left, h, w, [32, 32], antialias=True)
        ref = TF.horizontal_flip(ref) if params.flips[i] else ref
        assert torch.allclose(out[i], ref, atol=1e-5), (i, (top, left, h, w))


def test_crop_never_reads_outside_its_box() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 1.0  # the box; everything around it is 0
    params = _identity(1, 16)
    params.boxes = torch.tensor([[4, 4, 8, 8]])
    assert torch.allclose(apply_lor(x, params), torch.ones(1, 1, 16, 16), atol=1e-6)


def test_flip_and_rotation_are_exact_on_pixel_grids() -> None:
    x = torch.randn(2, 3, 8, 8)
    params = _identity(2, 8)
    params.flips = torch.tensor([True, False])
    out = apply_lor(x, params)
    assert torch.allclose(out[0], x[0].flip(-1), atol=1e-5)
    assert torch.allclose(out[1], x[1], atol=1e-5)
    params = _identity(1, 8)
    params.angles = torch.tensor([math.pi / 2], dtype=torch.float64)
    rotated = apply_lor(x[:1], params)
    assert any(torch.allclose(rotated, torch.rot90(x[:1], k, dims=(2, 3)), atol=1e-4) for k in (1, 3))


def test_rotation_fills_outside_with_zero() -> None:
    x = torch.ones(1, 1, 16, 16)
    params = _identity(1, 16)
    params.angles = torch.tensor([math.radians(45)], dtype=torch.float64)
    out = apply_lor(x, params)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 8, 8] == pytest.approx(1.0)


def test_variant_ops() -> None:
    assert lor_ops("none") == ()
    assert lor_ops("L") == ("crop",)
    assert lor_ops("L+F") == ("crop", "flip")
    assert "rotate" in lor_ops("L+R") and "flip" not in lor_ops("L+R")
    assert set(lor_ops("L+R+F")) == {"crop", "rotate", "flip"}
    with pytest.raises(ValueError):
        lor_ops("L+X")


def test_flip_only_with_f_and_rotation_only_with_r() -> None:
    n = 4000
    draws = {
        v: sample_lor_params(n, 16, 16, LORSettings.from_variant(v, 0.5, 15.0), _gen(3)) for v in LOR_VARIANTS
    }
    assert not draws["L"].flips.any() and not draws["L+R"].flips.any()
    for v in ("L+F", "L+R+F"):
        assert 0.45 < draws[v].flips.float().mean().item() < 0.55
    for v in ("L", "L+F", "none"):
        assert torch.all(draws[v].angles == 0)
    for v in ("L+R", "L+R+F"):
        angles = draws[v].angles
        assert angles.abs().max() <= math.radians(15.0) + 1e-9
        assert angles.abs().max() > math.radians(14.0) and angles.min() < 0 < angles.max()
    # Variants draw the same crops for one seed (paired ablations).
    assert torch.equal(draws["L"].boxes, draws["L+R+F"].boxes)
    assert torch.all(draws["none"].boxes == torch.tensor([0, 0, 16, 16]))


def test_gradients_reach_the_image_for_every_variant() -> None:
    for variant in ("L", "L+F", "L+R", "L+R+F"):
        x = torch.randn(6, 3, 16, 16, requires_grad=True)
        params = sample_lor_params(6, 16, 16, LORSettings.from_variant(variant, 0.5, 15.0), _gen())
        out = apply_lor(x, params)
        assert out.shape == x.shape
        out.square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_schedule_is_batched_and_seeded() -> None:
    settings = LORSettings.from_variant("L+R+F", 0.5, 10.0)
    coins, theta = sample_lor_schedule(200, 8, 16, 16, settings, 0.5, _gen(7))
    assert len(coins) == 200 and theta.shape == (200, 8, 2, 5) and theta.dtype == torch.float32
    assert 60 < sum(coins) < 140
    coins2, theta2 = sample_lor_schedule(200, 8, 16, 16, settings, 0.5, _gen(7))
    assert coins == coins2 and torch.equal(theta, theta2)
    none_coins, _ = sample_lor_schedule(5, 8, 16, 16, LORSettings.from_variant("none", 0.5, 0.0), 0.5, _gen())
    assert none_coins == [False] * 5


def test_theta_of_identity_is_identity() -> None:
    theta = lor_theta(_identity(3, 16), 16, 16)
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(theta, eye.expand(3, 2, 3))
