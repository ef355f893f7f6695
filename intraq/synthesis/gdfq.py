"""GDFQ generators (methods §6.1), the calibration source of IntraQ's stage 2 (T10) and a `gdfq` synthesizer.

IntraQ calibrates the quantized student's activation ranges on images from a GDFQ generator that is trained on
the fly against the teacher (CE + 0.1·BNS), not on its own synthetic set; `GdfqCalibrationSource` is that
generator. The same generator, trained against the teacher alone, is also selectable as an image source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from intraq.config import LOCATION_FIELDS, config_hash, to_dict
from intraq.data.base import DataSplits
from intraq.synthesis.base import SYNTHESIZERS, SynthContext, SyntheticSet
from intraq.synthesis.batches import state_fingerprint
from intraq.synthesis.bn_stats import BNStatsLoss
from intraq.synthesis.driver import BatchCheckpoint, run_iterations

BNS_WEIGHT = 0.1  # the lineage's weight of the BN-statistics term in the generator loss
ADAM_BETAS = (0.5, 0.999)


class CategoricalConditionalBN(nn.Module):
    """BN without affine (running stats kept) followed by a per-class gain and bias (GDFQ's ImageNet CCBN).

    `forward(x, labels)` takes int64 labels (B,); for Qimera's superposed samples it takes labels (B, K) and
    weights λ (B, K) and uses mean_k(λ_k·γ[y_k]) — the 1/K factor is how Qimera codes it (T21).
    """

    def __init__(self, num_classes: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.bn(x)
        if labels.dim() == 1:
            gamma, beta = self.gamma(labels), self.beta(labels)
        else:
            if weights is None:
                raise ValueError("labels of shape (B, K) need weights of shape (B, K)")
            w = weights.unsqueeze(-1)
            gamma, beta = (w * self.gamma(labels)).mean(1), (w * self.beta(labels)).mean(1)
        return gamma[:, :, None, None] * out + beta[:, :, None, None]


class GdfqBody(nn.Module):
    """The GDFQ decoder from a latent vector to an image, shared by GDFQ and Qimera.

    Linear → 128·s·s (s = image_size // 4); BN; ×2; conv 128→128; BN(eps 0.8); LeakyReLU; ×2; conv 128→64;
    BN(eps 0.8); LeakyReLU; conv 64→channels; tanh; BN(affine=False). The eps=0.8 is the official
    `BatchNorm2d(128, 0.8)` whose second positional argument is eps. With `conditional_bn` the first three BNs
    are CCBNs. Output lives in the teacher's normalized space, unclipped (T18).
    """

    def __init__(
        self, in_dim: int, num_classes: int, image_size: int, channels: int = 3, conditional_bn: bool = False
    ) -> None:
        super().__init__()
        if image_size % 4 or image_size < 4:
            raise ValueError(f"GDFQ upsamples 4x: image_size must be a multiple of 4, not {image_size}")
        self.init_size = image_size // 4
        self.conditional_bn = conditional_bn
        self.l1 = nn.Linear(in_dim, 128 * self.init_size**2)

        def norm(features: int, eps: float) -> nn.Module:
            if conditional_bn:
                return CategoricalConditionalBN(num_classes, features, eps=eps)
            return nn.BatchNorm2d(features, eps=eps)

        self.bn0 = norm(128, 1e-5)
        self.conv1 = nn.Conv2d(128, 128, 3, stride=1, padding=1)
        self.bn1 = norm(128, 0.8)
        self.conv2 = nn.Conv2d(128, 64, 3, stride=1, padding=1)
        self.bn2 = norm(64, 0.8)
        self.conv3 = nn.Conv2d(64, channels, 3, stride=1, padding=1)
        self.bn_out = nn.BatchNorm2d(channels, affine=False)

    def _norm(
        self, module: nn.Module, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        return module(x, labels, weights) if self.conditional_bn else module(x)

    def forward(
        self, h: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.l1(h).view(h.shape[0], 128, self.init_size, self.init_size)
        x = self._norm(self.bn0, x, labels, weights)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self._norm(self.bn1, self.conv1(x), labels, weights), 0.2)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self._norm(self.bn2, self.conv2(x), labels, weights), 0.2)
        return self.bn_out(torch.tanh(self.conv3(x)))


class AlwaysTrainMixin(nn.Module):
    """The lineage never puts its generators in eval mode: their BNs always use batch statistics."""

    def train(self, mode: bool = True) -> AlwaysTrainMixin:
        return super().train(True)


class GdfqGenerator(AlwaysTrainMixin):
    """GDFQ's generators: CIFAR `Generator` (input Embedding(C, latent)[y] ⊙ z) or, with `conditional_bn`,
    ImageNet `Generator_imagenet` (input z only; the class enters through CCBN). `forward(z, labels)`.
    """

    def __init__(
        self,
        num_classes: int,
        latent_dim: int = 100,
        image_size: int = 32,
        channels: int = 3,
        conditional_bn: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.latent_dim, self.conditional_bn = num_classes, latent_dim, conditional_bn
        self.label_emb = None if conditional_bn else nn.Embedding(num_classes, latent_dim)
        self.body = GdfqBody(latent_dim, num_classes, image_size, channels, conditional_bn)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = z if self.label_emb is None else self.label_emb(labels) * z
        return self.body(h, labels)


def default_conditional_bn(data: DataSplits) -> bool:
    """The official code uses the CCBN generator for ImageNet and the embedding generator for CIFAR."""
    return data.name == "imagenet"


def build_seeded(factory: Callable[[], nn.Module], rng: torch.Generator) -> nn.Module:
    """Build a module whose random init is drawn from `rng`, leaving the global RNG as it was."""
    seed = int(torch.randint(2**62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def step_on(
    loss: torch.Tensor, params: list[nn.Parameter], optimizer: torch.optim.Optimizer
) -> None:
    """One optimizer step on `params` only, so no gradient ever lands on the (shared) teacher."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()


def set_adam_capturable(optimizer: torch.optim.Optimizer, device: torch.device | None) -> None:
    """Adam's capturable form with its step counts on `device` (CUDA-graph capture needs it), or with None its
    default form, step counts on the host, as the reference path runs it."""
    for group in optimizer.param_groups:
        group["capturable"] = device is not None
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].detach().to(device or "cpu")


class GdfqCalibrationSource:
    """IntraQ stage 2's calibration images (T10): a GDFQ generator that takes one Adam step per batch.

    Each `next_batch()` samples z ~ N(0, I) and uniform labels, generates images, steps the generator on
    CE(teacher(images), y) + 0.1·BNS (teacher in eval mode, its parameters untouched) and returns the images,
    detached, for the student's activation-range calibration. `generator` is the RNG for z, y and the init.
    """

    def __init__(
        self,
        teacher: nn.Module,
        num_classes: int,
        image_size: int,
        latent_dim: int,
        lr: float,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator,
        conditional_bn: bool,
        channels: int = 3,
    ) -> None:
        self.teacher, self.num_classes, self.latent_dim = teacher, num_classes, latent_dim
        self.batch_size, self.device, self.rng = batch_size, torch.device(device), generator
        self.model = build_seeded(
            lambda: GdfqGenerator(num_classes, latent_dim, image_size, channels, conditional_bn), generator
        ).to(self.device)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=ADAM_BETAS)
        self.last_loss: float | None = None

    def sample_inputs(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z ~ N(0, I) and labels uniform over the classes, drawn from the source's RNG."""
        z = torch.randn(batch_size, self.latent_dim, generator=self.rng, device=self.rng.device)
        labels = torch.randint(self.num_classes, (batch_size,), generator=self.rng, device=self.rng.device)
        return z.to(self.device), labels.to(self.device)

    def step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One generator update; returns (detached images, labels, loss)."""
        z, labels = self.sample_inputs(self.batch_size)
        images, loss = self.update(z, labels)
        return images, labels, loss

    def update(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The update of `step` from given inputs (the fast path replays it on static ones): (images, loss)."""
        self.teacher.eval()
        self.model.train()
        images = self.model(z, labels)
        with BNStatsLoss(self.teacher) as bns:
            logits = self.teacher(images)
            loss = F.cross_entropy(logits, labels) + BNS_WEIGHT * bns.loss()
        step_on(loss, self.params, self.optimizer)
        return images.detach(), loss.detach()

    def next_batch(self) -> torch.Tensor:
        images, _, loss = self.step()
        self.last_loss = float(loss)
        return images

    def state_dict(self) -> dict:
        """Generator weights, Adam state and the RNG: a resumed run continues the same sequence exactly."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_adam_capturable(self.optimizer, None)  # a state saved by the fast path's captured calibration
        self.rng.set_state(state["rng"])

    @torch.no_grad()
    def sample(self, num_images: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_images` images with uniform labels, in batches (train-mode BN, as the lineage samples)."""
        images, labels = [], []
        for start in range(0, num_images, batch_size):
            z, y = self.sample_inputs(min(batch_size, num_images - start))
            images.append(self.model(z, y).cpu())
            labels.append(y.cpu())
        return torch.cat(images), torch.cat(labels).long()


def _training_key(ctx: SynthContext) -> str:
    """Names the generator training's checkpoint: everything that decides it, the teacher's weights included."""
    cfg = ctx.cfg
    return config_hash({
        "method": "gdfq", "seed": cfg.seed, "data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher),
        "synth": to_dict(cfg.synth), "gdfq": [cfg.finetune.gdfq_lr, cfg.finetune.gdfq_latent_dim],
        "image_size": ctx.data.image_size, "num_classes": ctx.data.num_classes,
        "teacher_state": state_fingerprint(ctx.teacher),
    }, exclude=LOCATION_FIELDS)


@SYNTHESIZERS.register("gdfq")
def synthesize_gdfq(ctx: SynthContext) -> SyntheticSet:
    """Train a GDFQ generator against the teacher alone, then sample `synth.num_images` images.

    Generator lr and latent size come from the finetune section (gdfq_lr, gdfq_latent_dim): `synth.lr` is
    IntraQ's image-pixel lr and meaningless for a generator. The training is checkpointed every
    `driver.CHECKPOINT_SECONDS` (a generator step changes its state throughout, so an interrupt keeps the last
    periodic checkpoint) and resumes from it exactly.
    """
    cfg, data = ctx.cfg, ctx.data
    rng = torch.Generator().manual_seed(cfg.seed)
    conditional_bn = default_conditional_bn(data)
    source = GdfqCalibrationSource(
        ctx.teacher,
        data.num_classes,
        data.image_size,
        cfg.finetune.gdfq_latent_dim,
        cfg.finetune.gdfq_lr,
        cfg.synth.batch_size,
        ctx.device,
        rng,
        conditional_bn,
        channels=data.channels,
    )
    losses: list[torch.Tensor] = []
    checkpoint = BatchCheckpoint(Path(ctx.work_dir) / f"gdfq-{_training_key(ctx)}.partial.pt")
    state = checkpoint.load()
    if state is not None:
        source.load_state_dict(state)
    with tqdm(total=cfg.synth.iterations, desc="gdfq generator", disable=not ctx.progress) as bar:
        run_iterations(
            0 if state is None else state["iteration"], cfg.synth.iterations, lambda it: None,
            lambda it, _: losses.append(source.step()[2]), lambda done: {**source.state_dict(), "iteration": done},
            checkpoint, bar,
        )
    images, labels = source.sample(cfg.synth.num_images, cfg.synth.batch_size)
    checkpoint.clear()
    meta = {
        "method": "gdfq",
        "seed": cfg.seed,
        "synth_hash": config_hash(cfg.synth),
        "iterations": cfg.synth.iterations,
        "latent_dim": cfg.finetune.gdfq_latent_dim,
        "generator_lr": cfg.finetune.gdfq_lr,
        "conditional_bn": conditional_bn,
        "final_loss": float(losses[-1]) if losses else None,
    }
    return SyntheticSet(images=images.float(), labels=labels, meta=meta)
