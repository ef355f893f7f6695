"""DeepInversion: R_feature and image priors by hand, jitter, clipping, lr schedule, snapshot, seeding, end to end."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import intraq.synthesis.deepinversion as di_mod
from intraq.config import RunConfig
from intraq.data.base import DataSplits, Normalization
from intraq.errors import UserInputError
from intraq.synthesis.base import SYNTHESIZERS, SynthContext
from intraq.synthesis.deepinversion import (
    BNFeatureLoss,
    DeepInversionConfig,
    clip_bounds,
    effective_config,
    generate_deepinversion,
    jitter_flip,
    l2_prior,
    lr_at,
    total_variation,
)
from intraq.teacher.models import build_model

NORM = Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.5))


def _data(name: str = "digits", num_classes: int = 10) -> DataSplits:
    return DataSplits(name, None, None, num_classes, NORM, 16)


def _teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn", 10).eval()


def _cfg(num_images: int = 8, batch_size: int = 4, iterations: int = 4, seed: int = 0) -> RunConfig:
    cfg = RunConfig(seed=seed)
    cfg.synth.method = "deepinversion"
    cfg.synth.num_images, cfg.synth.batch_size, cfg.synth.iterations = num_images, batch_size, iterations
    return cfg


def _ctx(cfg: RunConfig, teacher: nn.Module, work: Path, **kw: object) -> SynthContext:
    return SynthContext(cfg, teacher, _data(), torch.device("cpu"), work, progress=False, **kw)


def _small(**changes: object) -> DeepInversionConfig:
    """The CIFAR preset at 16 px, shrunk: constant lr, so a run's first k iterations match a k-iteration run."""
    base = DeepInversionConfig.cifar_preset().for_image_size(16)
    settings: dict[str, object] = {"num_images": 4, "batch_size": 4, "iterations": 6, "lr": 0.1}
    return dataclasses.replace(base, **{**settings, **changes})


def _bn(mean: list[float], var: list[float]) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(mean), eps=0.0, affine=False)
    bn.running_mean.copy_(torch.tensor(mean))
    bn.running_var.copy_(torch.tensor(var))
    return bn.eval()


# Two channels, N=2, 1x1: channel 0 = (1, 3) -> mean 2, biased var 1; channel 1 = (0, 4) -> mean 2, var 4.
TOY_X = torch.tensor([[1.0, 0.0], [3.0, 4.0]]).view(2, 2, 1, 1)
# BN1 (rm 0, rv 1): ||(1-1, 1-4)|| + ||(0-2, 0-2)|| = 3 + 2*sqrt(2). eps 0, rv 1: BN1 passes x through.
# BN2 (rm (2, 0), rv (1, 0)): ||(0, -4)|| + ||(0, -2)|| = 4 + 2 = 6.
TERM_1, TERM_2 = 3.0 + 2.0 * math.sqrt(2.0), 6.0


def test_r_feature_by_hand_first_bn_multiplier() -> None:
    toy = nn.Sequential(_bn([0.0, 0.0], [1.0, 1.0]), _bn([2.0, 0.0], [1.0, 0.0]))
    with BNFeatureLoss(toy) as bnf:
        toy(TOY_X)
        assert float(bnf.loss(10.0)) == pytest.approx(10.0 * TERM_1 + TERM_2, rel=1e-6)
        toy(TOY_X)
        assert float(bnf.loss(1.0)) == pytest.approx(TERM_1 + TERM_2, rel=1e-6)
    assert not toy[0]._forward_hooks and not toy[1]._forward_hooks  # hooks removed on exit


class _Reversed(nn.Module):
    """`a` comes first in module order but runs second."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _bn([2.0, 0.0], [1.0, 0.0])
        self.b = _bn([0.0, 0.0], [1.0, 1.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(self.b(x))


def test_first_bn_multiplier_follows_module_order_not_execution_order() -> None:
    toy = _Reversed()
    with BNFeatureLoss(toy) as bnf:
        toy(TOY_X)
        assert float(bnf.loss(10.0)) == pytest.approx(10.0 * TERM_2 + TERM_1, rel=1e-6)


def test_r_feature_needs_a_batchnorm() -> None:
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BNFeatureLoss(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_image_priors_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 4.0], [0.0, 3.0, 1.0], [2.0, 2.0, 5.0]]).view(1, 1, 3, 3)
    # horizontal (-1,-2,-3,2,0,-3), vertical (1,-1,3,-2,1,-4), diagonals (-2,-1,-1,1) and (-2,1,-2,-2)
    tv_l1, tv_l2 = total_variation(x)
    assert float(tv_l2) == pytest.approx(math.sqrt(27) + math.sqrt(32) + math.sqrt(7) + math.sqrt(13), rel=1e-6)
    assert float(tv_l1) == pytest.approx(11 / 6 + 12 / 6 + 5 / 4 + 7 / 4, rel=1e-6)
    assert float(l2_prior(x)) == pytest.approx(8.0)  # sqrt(1+4+16+0+9+1+4+4+25)
    assert float(l2_prior(torch.cat([x, 2 * x]))) == pytest.approx(12.0)  # batch mean of 8 and 16


def test_jitter_is_a_circular_roll_of_the_whole_batch() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    out = jitter_flip(x, 1, -2, flip=False)
    assert torch.equal(out.flatten().sort().values, x.flatten().sort().values)  # values preserved
    for i in range(4):
        for j in range(5):
            assert torch.equal(out[:, :, (i + 1) % 4, (j - 2) % 5], x[:, :, i, j])
    flipped = jitter_flip(x, 1, -2, flip=True)
    assert torch.equal(flipped, out.flip(3))
    assert torch.equal(jitter_flip(x, 0, 0, flip=False), x)


def test_clip_bounds_and_clipped_output(tmp_path: Path) -> None:
    low, high = clip_bounds(NORM)
    expected_low = [-m / s for m, s in zip(NORM.mean, NORM.std, strict=True)]
    expected_high = [(1 - m) / s for m, s in zip(NORM.mean, NORM.std, strict=True)]
    assert low.flatten().tolist() == pytest.approx(expected_low)
    assert high.flatten().tolist() == pytest.approx(expected_high)
    ctx = _ctx(_cfg(), _teacher(), tmp_path)
    for snapshot in ("best", "last"):
        di = dataclasses.replace(
            DeepInversionConfig.imagenet_preset(), num_images=4, batch_size=4, iterations=5, warmup_iterations=2,
            jitter=2, lr=1.0, snapshot=snapshot,
        )
        out = generate_deepinversion(ctx, di)
        assert (out.images >= low - 1e-6).all() and (out.images <= high + 1e-6).all()
        # lr 1 from N(0,1): the clamp is active, some pixels sit on the bounds
        assert bool(((out.images - low).abs() < 1e-6).any() or ((out.images - high).abs() < 1e-6).any())
        assert out.meta["clip_range"]["low"] == pytest.approx(expected_low)
    unclipped = generate_deepinversion(ctx, _small(lr=1.0))
    assert unclipped.meta["clip_range"] is None
    assert (unclipped.images < low).any() or (unclipped.images > high).any()


def test_warmup_cosine_schedule() -> None:
    def lr(i: int) -> float:
        return lr_at(i, 0.2, 2000, 100, "warmup-cosine")

    assert lr(0) == pytest.approx(0.002)
    assert lr(49) == pytest.approx(0.1)
    assert lr(99) == pytest.approx(0.2)
    assert lr(100) == pytest.approx(0.2)  # cosine starts at its top
    assert lr(1050) == pytest.approx(0.1)  # half-way through the 1,900 cosine iterations
    assert lr(1999) == pytest.approx(0.1 * (1 + math.cos(math.pi * 1899 / 1900)))
    assert 0 < lr(1999) < 1e-6
    assert lr_at(1234, 0.05, 2000, 0, "constant") == 0.05


def test_schedule_is_applied_in_the_loop(tmp_path: Path) -> None:
    di = dataclasses.replace(_small(), lr=0.2, lr_schedule="warmup-cosine", warmup_iterations=2, iterations=6)
    out = generate_deepinversion(_ctx(_cfg(), _teacher(), tmp_path), di)
    assert out.meta["batches"][0]["final_lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)) * 0.2)


def test_snapshot_is_the_lowest_loss_iterate(tmp_path: Path) -> None:
    teacher = _teacher()
    ctx = _ctx(_cfg(), teacher, tmp_path)
    # lr 2 makes the loss non-monotone, so the best iterate is neither the first nor the last
    best = generate_deepinversion(ctx, _small(iterations=5, lr=2.0))
    record = best.meta["batches"][0]
    trace = record["loss_trace"]
    k = record["best_iteration"]
    assert len(trace) == 5 and record["best_total"] == min(trace) and trace[k] == min(trace)
    assert 0 < k < 4, trace
    # a run stopped after k steps ends exactly on the tensor that iteration k measured (constant lr)
    stopped = generate_deepinversion(ctx, _small(iterations=k, lr=2.0, snapshot="last"))
    assert stopped.meta["batches"][0]["loss_trace"] == trace[:k]
    assert torch.equal(best.images, stopped.images)
    last = generate_deepinversion(ctx, _small(iterations=5, lr=2.0, snapshot="last"))
    assert torch.equal(best.labels, last.labels) and not torch.equal(best.images, last.images)


def test_after_step_snapshot_is_one_step_past_the_lowest_loss(tmp_path: Path) -> None:
    """The ImageNet script (NVlabs/DeepInversion@cb22f73): the lowest loss chooses the iteration, the copy is
    taken after that iteration's step, so it equals a run stopped one step later."""
    ctx = _ctx(_cfg(), _teacher(), tmp_path)
    after = generate_deepinversion(ctx, _small(iterations=5, lr=2.0, snapshot="after-step"))
    record = after.meta["batches"][0]
    k = record["best_iteration"]
    assert 0 < k < 4, record["loss_trace"]
    stopped = generate_deepinversion(ctx, _small(iterations=k + 1, lr=2.0, snapshot="last"))
    assert torch.equal(after.images, stopped.images)
    best = generate_deepinversion(ctx, _small(iterations=5, lr=2.0))
    assert not torch.equal(after.images, best.images)


def test_seeded_reproducibility(tmp_path: Path) -> None:
    a = generate_deepinversion(_ctx(_cfg(seed=3), _teacher(), tmp_path / "a"), _small(labels="random"))
    b = generate_deepinversion(_ctx(_cfg(seed=3), _teacher(), tmp_path / "b"), _small(labels="random"))
    c = generate_deepinversion(_ctx(_cfg(seed=4), _teacher(), tmp_path / "c"), _small(labels="random"))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.meta["batches"][0]["loss_trace"] == b.meta["batches"][0]["loss_trace"]
    assert not torch.equal(a.images, c.images)


def test_end_to_end_registered_digits(tmp_path: Path) -> None:
    teacher = _teacher()
    ctx = _ctx(_cfg(num_images=10, batch_size=4, iterations=3), teacher, tmp_path)
    synthesizer = SYNTHESIZERS.get("deepinversion")
    assert synthesizer is di_mod.synthesize_deepinversion
    out = synthesizer(ctx)
    assert out.images.shape == (10, 3, 16, 16) and out.images.dtype == torch.float32
    assert out.labels.dtype == torch.int64 and out.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    meta = out.meta
    eff = meta["effective"]
    assert meta["method"] == "deepinversion" and meta["preset"] == "cifar" and meta["seed"] == 0
    assert (eff["num_images"], eff["batch_size"], eff["iterations"]) == (10, 4, 3)  # from the RunConfig
    assert eff["jitter"] == 1 and eff["reference_size"] == 16  # 2 px at 32 -> 1 px at 16
    assert (eff["lr"], eff["r_feature"], eff["first_bn_multiplier"], eff["tv_l2"], eff["l2"]) == (
        0.05, 10.0, 1.0, 2.5e-5, 0.0
    )
    assert eff["lr_schedule"] == "constant" and not eff["flip"] and not eff["clip"] and eff["labels"] == "cyclic"
    assert meta["differs_from_preset"]["iterations"] == [2000, 3] and "jitter" in meta["differs_from_preset"]
    assert meta["num_batches"] == 3 and [b["size"] for b in meta["batches"]] == [4, 4, 2]
    assert {"main", "r_feature", "tv_l2", "tv_l1", "l2", "total", "best"} <= set(meta["batch_losses"][0])
    assert meta["reused_batches"] == 0 and meta["wall_time_s"] > 0
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())
    again = synthesizer(ctx)  # resumes from the per-batch files
    assert again.meta["reused_batches"] == 3 and torch.equal(again.images, out.images)


def test_imagenet_preset_and_overrides() -> None:
    cfg = _cfg(num_images=512, batch_size=128, iterations=300)
    di = effective_config(cfg, "imagenet", 224)
    assert (di.num_images, di.batch_size, di.iterations) == (512, 128, 300)
    assert (di.lr, di.betas, di.lr_schedule, di.warmup_iterations) == (0.2, (0.5, 0.9), "warmup-cosine", 100)
    assert (di.r_feature, di.first_bn_multiplier, di.tv_l2, di.tv_l1, di.l2) == (0.01, 10.0, 1e-4, 0.0, 1e-5)
    assert (di.jitter, di.flip, di.clip, di.labels, di.adi_scale) == (30, True, True, "random", 0.0)
    cifar = DeepInversionConfig.cifar_preset()
    assert (cifar.batch_size, cifar.iterations, cifar.lr, cifar.jitter, cifar.r_feature) == (256, 2000, 0.05, 2, 10.0)
    assert effective_config(cfg, "cifar10", 32).jitter == 2
    with pytest.raises(UserInputError, match="no preset"):
        effective_config(cfg, "mnist", 28)
    with pytest.raises(UserInputError, match="snapshot"):
        dataclasses.replace(di, snapshot="final").validate()


def test_adi_term_needs_a_student(tmp_path: Path) -> None:
    teacher = _teacher()
    with pytest.raises(UserInputError, match="student"):
        generate_deepinversion(_ctx(_cfg(), teacher, tmp_path), _small(adi_scale=0.2))
    # an identical copy agrees with the teacher: JS = 0, the term is the full scale
    twin = generate_deepinversion(
        _ctx(_cfg(), teacher, tmp_path, student=copy.deepcopy(teacher)), _small(adi_scale=0.2, iterations=2)
    )
    assert twin.meta["batches"][0]["final_losses"]["adi"] == pytest.approx(0.2, abs=1e-6)
    other = generate_deepinversion(
        _ctx(_cfg(), teacher, tmp_path, student=_teacher(seed=1)), _small(adi_scale=0.2, iterations=2)
    )
    assert 0.0 <= other.meta["batches"][0]["final_losses"]["adi"] < 0.2
    assert other.meta["config_hash"] != twin.meta["config_hash"]  # the student's weights are part of the key
    with pytest.raises(ValueError, match="shares modules"):
        generate_deepinversion(_ctx(_cfg(), teacher, tmp_path, student=teacher), _small(adi_scale=0.2))
