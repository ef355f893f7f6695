"""Qimera (methods §4): a GDFQ generator with superposed class embeddings, trained jointly with the student.

Recorded choices (T21): no disentanglement mapping by default (the official scripts run without it because
the flag is inverted); the mixed path standardizes per mixture slot across the batch while the single-class
path standardizes per sample, as coded; mixed CCBN gains are mean_k(λ_k·γ[y_k]) (a 1/K factor), as coded; the
KD term is the element-wise-mean KL × α·T² of the GDFQ lineage (T13), not IntraQ's batchmean one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from intraq.config import RunConfig
from intraq.data.base import DataSplits
from intraq.errors import UserInputError
from intraq.synthesis.bn_stats import BNStatsLoss
from intraq.synthesis.gdfq import (
    ADAM_BETAS,
    BNS_WEIGHT,
    AlwaysTrainMixin,
    GdfqBody,
    build_seeded,
    default_conditional_bn,
    step_on,
)

NORM_EPS = 1e-5  # BatchNorm1d's default eps, which Qimera's embedding normalization uses
DM_DIM = 100  # Qimera's `intermediate_dim` for the disentanglement mapping


def standardize_per_sample(e: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Each row of (B, D) to mean 0 / biased std 1 over D: Qimera's BatchNorm1d on the transposed matrix."""
    mean = e.mean(dim=-1, keepdim=True)
    var = e.var(dim=-1, unbiased=False, keepdim=True)
    return (e - mean) / torch.sqrt(var + eps)


def standardize_per_slot(e: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """(B, K, D) normalized per mixture slot k over batch and features: what `.T` + BatchNorm1d does (T21)."""
    mean = e.mean(dim=(0, 2), keepdim=True)
    var = e.var(dim=(0, 2), unbiased=False, keepdim=True)
    return (e - mean) / torch.sqrt(var + eps)


@dataclass
class GeneratorInput:
    """One batch of generator inputs and the label vectors that the generator and student CE use (T20)."""

    embeddings: torch.Tensor  # (B, D) single-class, or (B, K, D) per-slot for mixed samples
    labels: torch.Tensor  # int64 (B,) or (B, K)
    weights: torch.Tensor | None  # λ (B, K) for mixed samples, rows sum to 1
    soft_labels: torch.Tensor  # (B, C): one-hot, or λ_k scatter-added at y_k

    @property
    def mixed(self) -> bool:
        return self.weights is not None


def sample_single_embeddings(
    table: torch.Tensor, batch_size: int, rng: torch.Generator, noise_scale: float = 1.0
) -> GeneratorInput:
    """Uniform labels y, e = E[y] + noise_scale·z, standardized per sample over D."""
    num_classes, dim = table.shape
    labels = torch.randint(num_classes, (batch_size,), generator=rng, device=rng.device).to(table.device)
    z = torch.randn(batch_size, dim, generator=rng, device=rng.device).to(table.device)
    embeddings = standardize_per_sample(table[labels] + noise_scale * z)
    soft = F.one_hot(labels, num_classes).to(table.dtype)
    return GeneratorInput(embeddings, labels, None, soft)


def sample_mixed_embeddings(
    table: torch.Tensor, batch_size: int, mix_classes: int, rng: torch.Generator, noise_scale: float = 1.0
) -> GeneratorInput:
    """Superposed samples: K labels per sample (uniform, with replacement), K noises, λ = softmax(N(0, I_K)).

    Slot embeddings E[y_k] + noise_scale·z_k are standardized per slot across the batch (as coded, T21); the
    superposition Σ_k λ_k·(…)_k happens in the generator after the optional mapping. The soft label is λ
    scatter-added at the y_k, so a label drawn twice gets the sum of its λs.
    """
    num_classes, dim = table.shape
    shape = (batch_size, mix_classes)
    labels = torch.randint(num_classes, shape, generator=rng, device=rng.device).to(table.device)
    z = torch.randn(*shape, dim, generator=rng, device=rng.device).to(table.device)
    weights = torch.softmax(torch.randn(*shape, generator=rng, device=rng.device), dim=1).to(table.device)
    embeddings = standardize_per_slot(table[labels] + noise_scale * z)
    soft = torch.zeros(batch_size, num_classes, dtype=table.dtype, device=table.device)
    soft.scatter_add_(1, labels, weights.to(table.dtype))
    return GeneratorInput(embeddings, labels, weights, soft)


class QimeraGenerator(AlwaysTrainMixin):
    """Label-embedding table E (C×D) → standardization → optional mapping Linear(D→100) → GDFQ body.

    `embedding_init` (C×D) replaces the N(0, 1) init (`--randemb`) with e.g. the teacher's FC weights.
    With `conditional_bn` the body uses CCBN (ImageNet); the embedding input is used either way.
    """

    def __init__(
        self,
        num_classes: int,
        latent_dim: int = 64,
        image_size: int = 32,
        channels: int = 3,
        conditional_bn: bool = False,
        disentangle: bool = False,
        embedding_init: torch.Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.latent_dim, self.noise_scale = num_classes, latent_dim, noise_scale
        self.embedding = nn.Embedding(num_classes, latent_dim)  # default init N(0, 1), as --randemb
        if embedding_init is not None:
            if tuple(embedding_init.shape) != (num_classes, latent_dim):
                expected = (num_classes, latent_dim)
                raise ValueError(f"embedding_init must be {expected}, got {tuple(embedding_init.shape)}")
            with torch.no_grad():
                self.embedding.weight.copy_(embedding_init)
        self.mapping = nn.Linear(latent_dim, DM_DIM) if disentangle else None
        in_dim = DM_DIM if disentangle else latent_dim
        self.body = GdfqBody(in_dim, num_classes, image_size, channels, conditional_bn)

    def sample(self, batch_size: int, mixed: bool, mix_classes: int, rng: torch.Generator) -> GeneratorInput:
        table = self.embedding.weight
        if mixed:
            return sample_mixed_embeddings(table, batch_size, mix_classes, rng, self.noise_scale)
        return sample_single_embeddings(table, batch_size, rng, self.noise_scale)

    def forward(self, inp: GeneratorInput) -> torch.Tensor:
        h = inp.embeddings if self.mapping is None else self.mapping(inp.embeddings)
        if inp.weights is not None:
            h = (inp.weights.unsqueeze(-1).to(h.dtype) * h).sum(dim=1)
        return self.body(h, inp.labels, inp.weights)


def soft_cross_entropy(logits: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
    """Batch mean of -Σ_c q_c·log softmax(logits)_c, Qimera's CE against one-hot or λ-mixed label vectors."""
    return -(soft_labels * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def qimera_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 20.0, alpha: float = 1.0
) -> torch.Tensor:
    """`KLDivLoss()` with its default element-wise mean (÷ B·C) × α·T²: the GDFQ-lineage scale (T13).

    Written as sum / numel because PyTorch warns that reduction='mean' will change meaning.
    """
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="sum",
    )
    return alpha * temperature**2 * kl / student_logits.numel()


def teacher_fc_embedding(teacher: nn.Module, num_classes: int, latent_dim: int) -> torch.Tensor:
    """The teacher's last Linear weight (C×F), Qimera's CIFAR-100 embedding init; needs latent_dim = F."""
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserInputError("qimera.embedding=teacher-fc needs a teacher with a Linear head")
    weight = linears[-1].weight.detach().cpu().clone()
    if tuple(weight.shape) != (num_classes, latent_dim):
        raise UserInputError(
            f"qimera.embedding=teacher-fc: the teacher head is {tuple(weight.shape)}, so set "
            f"qimera.latent_dim={weight.shape[1]} (now {latent_dim}) or use qimera.embedding=random"
        )
    return weight


def run_qimera(
    teacher: nn.Module,
    student: nn.Module,
    data: DataSplits,
    cfg: RunConfig,
    device: torch.device,
    evaluate: Callable[[nn.Module], float],
    progress: bool = True,
    checkpoint_path: Path | None = None,
) -> dict:
    """Qimera's joint loop (methods §4.2–4.3) on an already quantized `student`; both models on `device`.

    Per iteration: a (possibly mixed) batch from the generator; one generator Adam step on soft CE + 0.1·BNS;
    a student forward on the detached images (this calibrates the activation ranges in epochs < calib_epochs);
    from `warmup_epochs` on, one student SGD step on KD + soft CE. The student stays in eval mode (frozen BN).
    `evaluate(student)` (test top-1 %) runs after every epoch with frozen ranges; best ties go to the later
    epoch (T12). The epochs run in KD fine-tuning's loop (`intraq.finetune.loop`): with `checkpoint_path`
    every epoch is checkpointed and a later call resumes; a non-finite loss stops the run
    (`diverged_at_epoch`), a student loss above 10x the first trained epoch's is flagged (`exploded_at_epoch`).
    """
    # Imported here so the generator and losses stay importable without the quantizer and trainer.
    from intraq.finetune.loop import EpochLoop, MultiStepLR, run_epochs
    from intraq.quantize import set_act_calibration

    q = cfg.qimera
    if q.epochs < 1 or q.iters_per_epoch < 1 or q.mix_classes < 1 or not 0.0 <= q.mix_prob <= 1.0:
        raise UserInputError(
            f"qimera needs epochs, iters_per_epoch, mix_classes >= 1 and 0 <= mix_prob <= 1; got {q.epochs}, "
            f"{q.iters_per_epoch}, {q.mix_classes}, {q.mix_prob}"
        )
    if q.embedding not in ("random", "teacher-fc"):
        raise UserInputError(f"qimera.embedding={q.embedding!r}: expected random or teacher-fc")
    device = torch.device(device)
    rng = torch.Generator().manual_seed(cfg.seed)
    teacher.eval()
    embedding_init = (
        teacher_fc_embedding(teacher, data.num_classes, q.latent_dim) if q.embedding == "teacher-fc" else None
    )
    generator = build_seeded(
        lambda: QimeraGenerator(
            data.num_classes,
            q.latent_dim,
            data.image_size,
            data.channels,
            conditional_bn=default_conditional_bn(data),
            disentangle=q.disentangle,
            embedding_init=embedding_init,
        ),
        rng,
    ).to(device)
    g_params = list(generator.parameters())
    opt_g = torch.optim.Adam(g_params, lr=q.generator_lr, betas=ADAM_BETAS)
    opt_s = torch.optim.SGD(
        student.parameters(), lr=q.lr, momentum=q.momentum, nesterov=True, weight_decay=q.weight_decay
    )
    schedules = [MultiStepLR(opt, list(q.lr_steps), q.lr_decay) for opt in (opt_s, opt_g)]

    def train_epoch(epoch: int, bar: tqdm) -> dict:
        calibrating, train_student = epoch < q.calib_epochs, epoch >= q.warmup_epochs
        set_act_calibration(student, calibrating)
        student.eval()
        loss_g_sum = torch.zeros((), device=device)
        loss_s_sum = torch.zeros((), device=device)
        mixed_batches = 0
        for _ in range(q.iters_per_epoch):
            mixed = bool(torch.rand((), generator=rng) < q.mix_prob)
            mixed_batches += int(mixed)
            inp = generator.sample(q.batch_size, mixed, q.mix_classes, rng)
            images = generator(inp)
            with BNStatsLoss(teacher) as bns:
                teacher_logits = teacher(images)
                loss_g = soft_cross_entropy(teacher_logits, inp.soft_labels) + BNS_WEIGHT * bns.loss()
            step_on(loss_g, g_params, opt_g)
            loss_g_sum += loss_g.detach()
            with torch.set_grad_enabled(train_student):
                student_logits = student(images.detach())  # calibrates the ranges while they are unfrozen
            if train_student:
                loss_s = qimera_kd_loss(student_logits, teacher_logits.detach(), q.temperature, q.alpha)
                loss_s = loss_s + soft_cross_entropy(student_logits, inp.soft_labels)
                opt_s.zero_grad(set_to_none=True)
                loss_s.backward()
                opt_s.step()
                loss_s_sum += loss_s.detach()
            bar.update()
        set_act_calibration(student, False)  # frozen for evaluation, as the official freeze after each epoch
        return {
            "epoch": epoch,
            "calibrating": calibrating,
            "student_trained": train_student,
            "lr": opt_s.param_groups[0]["lr"],
            "generator_lr": opt_g.param_groups[0]["lr"],
            "loss_generator": loss_g_sum.item() / q.iters_per_epoch,
            "loss_student": loss_s_sum.item() / q.iters_per_epoch if train_student else None,
            "mixed_fraction": mixed_batches / q.iters_per_epoch,
        }

    def evaluate_student() -> float:
        acc = float(evaluate(student))
        student.eval()
        return acc

    modules = {
        "student": student, "generator_model": generator, "optimizer_student": opt_s, "optimizer_generator": opt_g,
    }

    def restore(blob: dict) -> None:
        for name, module in modules.items():
            module.load_state_dict(blob[name])
        rng.set_state(blob["rng"])

    loop = EpochLoop(
        q.epochs, q.iters_per_epoch, "qimera", checkpoint_path, loss_keys=("loss_student", "loss_generator"),
        progress=progress,
    )
    outcome = run_epochs(
        loop, train_epoch, lambda epoch: "train", lambda epoch, record: True, evaluate_student, schedules,
        lambda: {**{name: module.state_dict() for name, module in modules.items()}, "rng": rng.get_state()},
        restore, device,
    )
    history = outcome.history
    last_calibrated = max(min(q.calib_epochs, q.epochs), 1) - 1  # a diverged run may have stopped before it
    after_calibration = history[min(last_calibrated, len(history) - 1)]["acc"]
    best = max(history, key=lambda h: (h["acc"], h["epoch"]))
    return {
        "acc_after_calibration": after_calibration,
        "acc_final": history[-1]["acc"],
        "acc_best": best["acc"],
        "best_epoch": best["epoch"],
        "diverged_at_epoch": outcome.first_epoch("diverged"),
        "exploded_at_epoch": outcome.first_epoch("exploded"),
        "history": history,
        "seconds": outcome.seconds,
        "sittings": outcome.sittings,
    }
