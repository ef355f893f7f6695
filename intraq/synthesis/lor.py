"""Local Object Reinforcement (methods §2.1.6, trap T3): batched, differentiable crops (+ flip/rotation).

The official code applies torchvision's RandomResizedCrop and RandomHorizontalFlip image by image. Here the
per-image boxes, flips and angles are drawn as tensors (same RandomResizedCrop box rule: 10 tries of
scale x log-uniform ratio, integer box, else the centre crop), folded into one 2x3 affine matrix per image
and applied to the whole batch with one `affine_grid` + `grid_sample`, so gradients reach the image
tensor and there is no Python loop over images.

Resampling: bilinear, `align_corners=False`, so the box maps pixel centres exactly as `interpolate` on
the cropped tensor does, and every sample point is clamped to the box's first and last pixel centres, as
`interpolate` clamps to the crop: a crop never reads a pixel outside its box, and for crop (+ flip) the
result equals torchvision's crop-then-resize (+ flip) up to float rounding. With rotation (not in any
official code), points whose un-rotated position falls outside the resized crop read 0, torchvision's
default fill (0 is the mean pixel in the normalized space used here); inside, one bilinear sample of the
source replaces torchvision's two (resize, then rotate). Rotation turns the resized crop about its centre,
i.e. RandomRotation after the crop; flip comes last.

A LOR transform is (n, 2, 5) per image: per output axis, the 2x3 `affine_grid` row followed by the box's
clamping bounds on that axis (normalized coordinates of its first and last pixel centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOR_VARIANTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "L": ("crop",),
    "L+F": ("crop", "flip"),  # what the official code calls LOR
    "L+R": ("crop", "rotate"),
    "L+R+F": ("crop", "rotate", "flip"),
}
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop tries this many boxes before its centre-crop fallback
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def lor_ops(variant: str) -> tuple[str, ...]:
    """The ops of a LOR variant name (`none`, `L`, `L+F`, `L+R`, `L+R+F`)."""
    try:
        return LOR_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown LOR variant {variant!r}; known: {', '.join(LOR_VARIANTS)}") from None


@dataclass
class LORSettings:
    """What one LOR variant does: ops, crop scale range and aspect ratio range, rotation range in degrees."""

    ops: tuple[str, ...] = ("crop", "flip")
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = DEFAULT_RATIO
    rotation_degrees: float = 15.0

    @classmethod
    def from_variant(cls, variant: str, aug_margin: float, rotation_degrees: float) -> LORSettings:
        return cls(ops=lor_ops(variant), scale=(aug_margin, 1.0), rotation_degrees=rotation_degrees)


@dataclass
class LORParams:
    """Per-image draws: boxes (n, 4) int64 as (top, left, height, width), flips (n,) bool, angles (n,) rad."""

    boxes: torch.Tensor
    flips: torch.Tensor
    angles: torch.Tensor


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """RandomResizedCrop boxes for n images: (n, 4) int64 (top, left, h, w), always inside the image."""
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (
        scale[0]
        + (scale[1] - scale[0]) * torch.rand(n, CROP_ATTEMPTS, generator=generator, dtype=torch.float64)
    )
    aspect = torch.exp(
        log_lo + (log_hi - log_lo) * torch.rand(n, CROP_ATTEMPTS, generator=generator, dtype=torch.float64)
    )
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.int().argmax(dim=1, keepdim=True)  # index of the first valid try (0 if none)
    found = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback: torchvision's centre crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u_top = torch.rand(n, generator=generator, dtype=torch.float64)
    u_left = torch.rand(n, generator=generator, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1).double()).long().clamp(max=height - h)
    left = torch.floor(u_left * (width - w + 1).double()).long().clamp(max=width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def sample_lor_params(
    n: int, height: int, width: int, settings: LORSettings, generator: torch.Generator
) -> LORParams:
    """Boxes, flips and angles for n images; all are always drawn, so variants share crops for one seed."""
    if "crop" in settings.ops:
        boxes = sample_crop_boxes(n, height, width, settings.scale, settings.ratio, generator)
    else:
        boxes = torch.tensor([[0, 0, height, width]], dtype=torch.long).expand(n, 4).clone()
    flips = torch.rand(n, generator=generator) < 0.5
    angles = (2.0 * torch.rand(n, generator=generator, dtype=torch.float64) - 1.0) * math.radians(
        settings.rotation_degrees
    )
    if "flip" not in settings.ops:
        flips = torch.zeros_like(flips)
    if "rotate" not in settings.ops:
        angles = torch.zeros_like(angles)
    return LORParams(boxes=boxes, flips=flips, angles=angles)


def lor_theta(params: LORParams, height: int, width: int) -> torch.Tensor:
    """(n, 2, 3) float32 `affine_grid` matrices: output coords -> flip -> rotate -> crop box in the source.

    With align_corners=False a box (top, left, h, w) maps normalized output x to (w/W) x + (2 left + w)/W - 1.
    """
    boxes = params.boxes.double()
    top, left, h, w = boxes.unbind(dim=1)
    sx, sy = w / width, h / height
    tx, ty = (2 * left + w) / width - 1.0, (2 * top + h) / height - 1.0
    cos, sin = torch.cos(params.angles), torch.sin(params.angles)
    # Rotation in pixel units of the (W x H) output, in normalized coords: D^-1 R D with D = diag(W, H) / 2.
    r00, r01 = cos, -sin * height / width
    r10, r11 = sin * width / height, cos
    f = torch.where(params.flips, -1.0, 1.0).double()
    # A = S R F: the flip negates the first column of R.
    theta = torch.stack(
        [
            torch.stack([sx * r00 * f, sx * r01, tx], dim=1),
            torch.stack([sy * r10 * f, sy * r11, ty], dim=1),
        ],
        dim=1,
    )
    return theta.float()


def lor_transforms(params: LORParams, height: int, width: int) -> torch.Tensor:
    """(n, 2, 5) float32: `lor_theta` plus, per axis, the box's first and last pixel centre (normalized)."""
    top, left, h, w = params.boxes.double().unbind(dim=1)
    x_bounds = torch.stack([(2 * left + 1) / width - 1.0, (2 * (left + w) - 1) / width - 1.0], dim=1)
    y_bounds = torch.stack([(2 * top + 1) / height - 1.0, (2 * (top + h) - 1) / height - 1.0], dim=1)
    bounds = torch.stack([x_bounds, y_bounds], dim=1).float()
    return torch.cat([lor_theta(params, height, width), bounds], dim=2)


def apply_affine(x: torch.Tensor, transform: torch.Tensor, zero_outside: bool = False) -> torch.Tensor:
    """Resample the batch x (B, C, H, W) with per-image LOR transforms (B, 2, 5); differentiable in x.

    Sample points are clamped into the crop box (see the module docstring). A plain (B, 2, 3) matrix samples
    without a box (border replication at the image edge). `zero_outside` (needed only with rotation) sets points
    whose un-rotated position lies outside the resized crop, i.e. outside the box's extent, to 0.
    """
    theta = transform[..., :3].to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if transform.shape[-1] == 3:
        inside = (grid.abs() <= 1.0).all(dim=-1) if zero_outside else None
    else:
        lo = transform[:, :, 3].to(x.dtype).view(-1, 1, 1, 2)  # (B, 1, 1, xy): first pixel centre of the box
        hi = transform[:, :, 4].to(x.dtype).view(-1, 1, 1, 2)
        inside = None
        if zero_outside:  # half a pixel per axis (x, y), filled on x's device: no host copy inside a CUDA graph
            half_pixel = torch.cat([x.new_full((1,), 1.0 / x.shape[-1]), x.new_full((1,), 1.0 / x.shape[-2])])
            inside = ((grid >= lo - half_pixel) & (grid <= hi + half_pixel)).all(dim=-1)
        grid = torch.maximum(torch.minimum(grid, hi), lo)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if inside is not None:
        out = out * inside.unsqueeze(1).to(out.dtype)
    return out


def apply_lor(x: torch.Tensor, params: LORParams) -> torch.Tensor:
    """Convenience: one LOR draw applied to a batch (params for len(x) images)."""
    transform = lor_transforms(params, x.shape[-2], x.shape[-1]).to(x.device)
    return apply_affine(x, transform, zero_outside=bool(params.angles.ne(0).any()))


def sample_lor_schedule(
    iterations: int,
    batch: int,
    height: int,
    width: int,
    settings: LORSettings,
    prob: float,
    generator: torch.Generator,
) -> tuple[list[bool], torch.Tensor]:
    """All of a batch's LOR randomness up front: one coin per iteration, (iterations, batch, 2, 5) transforms.

    Hoisted out of the optimization loop so the loop does no sampling and no host-device traffic for it.
    """
    if not settings.ops:
        return [False] * iterations, torch.empty(iterations, batch, 2, 5)
    coins = (torch.rand(iterations, generator=generator) < prob).tolist()
    params = sample_lor_params(iterations * batch, height, width, settings, generator)
    transforms = lor_transforms(params, height, width).view(iterations, batch, 2, 5)
    return coins, transforms
