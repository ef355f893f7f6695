"""GDFQ generators, the IntraQ stage-2 calibration source and the `gdfq` synthesizer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from intraq.config import RunConfig
from intraq.data.base import DataSplits, Normalization, TensorImageDataset
from intraq.synthesis.base import SYNTHESIZERS, SynthContext
from intraq.synthesis.gdfq import CategoricalConditionalBN, GdfqCalibrationSource, GdfqGenerator
from intraq.teacher.models import build_model


def tiny_teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn", 10).eval()


def tiny_data(name: str = "digits", image_size: int = 16) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    labels = torch.arange(20) % 10
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ds = TensorImageDataset(images, labels, norm)
    return DataSplits(name=name, train=ds, test=ds, num_classes=10, norm=norm, image_size=image_size)


def test_generator_shapes_and_final_bn_standardizes_channels() -> None:
    for conditional, size in ((False, 16), (True, 16), (False, 32)):
        gen = GdfqGenerator(10, latent_dim=100, image_size=size, channels=3, conditional_bn=conditional)
        gen.eval()  # ignored: the lineage's generators always use batch statistics
        assert gen.training
        z, y = torch.randn(32, 100), torch.randint(10, (32,))
        out = gen(z, y)
        assert out.shape == (32, 3, size, size)
        mean = out.mean(dim=(0, 2, 3))
        std = out.var(dim=(0, 2, 3), unbiased=False).sqrt()
        assert torch.allclose(mean, torch.zeros(3), atol=1e-4)
        assert torch.allclose(std, torch.ones(3), atol=1e-2)


def test_architecture_follows_gdfq() -> None:
    cifar = GdfqGenerator(10, 100, 32, conditional_bn=False)
    assert cifar.label_emb is not None and cifar.label_emb.weight.shape == (10, 100)
    assert cifar.body.l1.out_features == 128 * 8 * 8
    assert isinstance(cifar.body.bn0, nn.BatchNorm2d) and cifar.body.bn0.eps == 1e-5
    assert cifar.body.bn1.eps == 0.8 and cifar.body.bn2.eps == 0.8  # BatchNorm2d(128, 0.8): eps, not momentum
    assert not cifar.body.bn_out.affine
    imagenet = GdfqGenerator(10, 100, 16, conditional_bn=True)
    assert imagenet.label_emb is None
    assert isinstance(imagenet.body.bn1, CategoricalConditionalBN) and imagenet.body.bn1.bn.eps == 0.8
    assert not imagenet.body.bn1.bn.affine


def test_ccbn_init_and_per_class_effect() -> None:
    ccbn = CategoricalConditionalBN(4, 5)
    assert torch.equal(ccbn.gamma.weight, torch.ones(4, 5))
    assert torch.equal(ccbn.beta.weight, torch.zeros(4, 5))
    x = torch.randn(8, 5, 3, 3)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    plain = nn.BatchNorm2d(5, affine=False)(x)
    assert torch.allclose(ccbn(x, labels), plain, atol=1e-6)
    with torch.no_grad():
        ccbn.gamma.weight[2].fill_(3.0)
        ccbn.beta.weight[2].fill_(-1.0)
    out = ccbn(x, labels)
    is2 = labels == 2
    assert torch.allclose(out[is2], 3.0 * plain[is2] - 1.0, atol=1e-5)
    assert torch.allclose(out[~is2], plain[~is2], atol=1e-5)
    # mixed (Qimera): gain = mean_k(λ_k γ[y_k]), i.e. divided by K
    mixed = ccbn(x[:1], torch.tensor([[2, 0]]), torch.tensor([[0.5, 0.5]]))
    gamma = (0.5 * 3.0 + 0.5 * 1.0) / 2
    beta = (0.5 * -1.0 + 0.5 * 0.0) / 2
    ref = nn.BatchNorm2d(5, affine=False)(x[:1])
    assert torch.allclose(mixed, gamma * ref + beta, atol=1e-5)


def test_calibration_source_steps_generator_not_teacher() -> None:
    teacher = tiny_teacher()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    source = GdfqCalibrationSource(
        teacher, 10, 16, 100, 1e-3, 8, torch.device("cpu"), torch.Generator().manual_seed(0), False
    )
    gen_before = [p.detach().clone() for p in source.model.parameters()]
    images = source.next_batch()
    assert images.shape == (8, 3, 16, 16) and not images.requires_grad
    assert source.last_loss is not None and source.last_loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, source.model.parameters(), strict=True))
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # incl. BN running stats (teacher in eval mode)
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_calibration_source_is_seeded() -> None:
    def batch(seed: int) -> torch.Tensor:
        rng = torch.Generator().manual_seed(seed)
        source = GdfqCalibrationSource(tiny_teacher(), 10, 16, 100, 1e-3, 4, torch.device("cpu"), rng, True)
        source.next_batch()
        return source.next_batch()

    assert torch.allclose(batch(3), batch(3))
    assert not torch.allclose(batch(3), batch(4))


def test_gdfq_synthesizer(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.synth.method = "gdfq"
    cfg.synth.iterations = 3
    cfg.synth.batch_size = 8
    cfg.synth.num_images = 20
    ctx = SynthContext(
        cfg=cfg, teacher=tiny_teacher(), data=tiny_data(), device=torch.device("cpu"), work_dir=tmp_path,
        progress=False,
    )
    out = SYNTHESIZERS.get("gdfq")(ctx)
    assert out.images.shape == (20, 3, 16, 16) and out.images.dtype == torch.float32
    assert out.labels.shape == (20,) and out.labels.dtype == torch.int64
    assert int(out.labels.min()) >= 0 and int(out.labels.max()) < 10
    assert out.meta["method"] == "gdfq" and out.meta["iterations"] == 3
    assert out.meta["conditional_bn"] is False
