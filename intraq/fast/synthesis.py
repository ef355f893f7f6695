"""Stage 1 fast path: IntraQ / ADI-free image generation of R runs' batches stepped together on the device.

The algorithm is the reference's (`intraq.synthesis.intraq._optimize_batch`): the same seeded draws per batch
(start images, labels, SIL targets, the LOR coins and crop matrices, all from the batch's CPU generator, in
the same order), BNS (one-pass variance, as the reference's default) + SIL/CE + MDC hinges, Adam(lr 0.5) on
the images with ReduceLROnPlateau stepped every iteration. What differs is only how it runs:

- all iterations' LOR draws are uploaded once per batch; the per-iteration coin selects the cropped or the
  plain batch with `torch.where` on the device (exact: the unselected branch gets a zero gradient), so the
  step has no host branch and one captured graph serves every iteration;
- losses, lr and plateau state stay on the device (read once per batch, for its record);
- MDC is always computed when MDC is on; images whose class has no centre yet have mask 0, which makes the
  terms exactly 0, as the reference's "no centre" zeros;
- with R runs the teacher sees the R batches as one (R*B) batch (eval BN: per-image), and the BN-statistics,
  target and MDC terms are computed per run, so each run's gradient is its own.

Not here: the ADI method (it needs the student in the loop) and bf16 autocast: use the reference path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from intraq.fast.capture import StepRunner, compile_loss
from intraq.fast.optim import PlateauState
from intraq.fast.schedule import to_device
from intraq.fast.settings import FastSettings
from intraq.results import sitting
from intraq.synthesis.batches import batch_seed
from intraq.synthesis.centers import ClassCenters
from intraq.synthesis.lor import LORSettings, apply_affine, sample_lor_schedule
from intraq.synthesis.losses import draw_sil_targets, mdc_loss, target_loss
from intraq.synthesis.settings import SynthSettings
from intraq.teacher.features import FeatureTap, feature_module_name

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class GroupedBNStats:
    """The BNS loss of `intraq.synthesis.bn_stats.BNStatsLoss` (fast variance), per run of an (R*B) batch."""

    def __init__(self, model: nn.Module, groups: int) -> None:
        self.groups, self.active = groups, False
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm2d layer: the BNS loss needs one")
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple, output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0].unflatten(0, (self.groups, -1))
        mean = x.mean(dim=(1, 3, 4))
        var = ((x * x).mean(dim=(1, 3, 4)) - mean * mean).clamp_min(0.0)
        self.terms.append((mean - module.running_mean).pow(2).mean(1) + (var - module.running_var).pow(2).mean(1))

    def loss(self) -> torch.Tensor:
        value = torch.stack(self.terms).sum(0) / len(self.layers)
        self.terms = []
        return value

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class BatchDraws:
    """One batch's randomness, drawn exactly as the reference draws it."""

    x0: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    coins: list[bool]
    thetas: torch.Tensor


def draw_batch(seed: int, index: int, size: int, channels: int, side: int, num_classes: int,
               settings: SynthSettings) -> BatchDraws:
    generator = torch.Generator().manual_seed(batch_seed(seed, index))
    x0 = torch.randn(size, channels, side, side, generator=generator)
    labels = torch.randint(0, num_classes, (size,), generator=generator)
    targets = draw_sil_targets(size, settings.target_pro, generator)
    lor = LORSettings.from_variant(settings.lor, settings.aug_margin, settings.rotation_degrees)
    coins, thetas = sample_lor_schedule(settings.iterations, size, side, side, lor, settings.lor_prob, generator)
    return BatchDraws(x0, labels, targets, coins, thetas)


@dataclass
class StackedBatchOptimizer:
    """Optimizes R batches of `size` images at once; keeps its state (and captured graph) across batches."""

    teacher: nn.Module
    settings: SynthSettings
    runs: int
    size: int
    shape: tuple[int, int, int]  # channels, height, width
    device: torch.device
    fast: FastSettings = field(default_factory=FastSettings)

    def __post_init__(self) -> None:
        s, r, b, dev = self.settings, self.runs, self.size, self.device
        if s.method != "intraq":
            raise ValueError(f"the fast generation path makes IntraQ images only, not {s['method']!r}")
        self.fast.check_device(dev)
        self.memory_format = torch.channels_last if self.fast.channels_last else torch.contiguous_format
        self.teacher.eval().requires_grad_(False).to(device=dev, memory_format=self.memory_format)
        self.bns = GroupedBNStats(self.teacher, r)
        self.tap = FeatureTap()
        self.tap_handle = self.teacher.get_submodule(feature_module_name(self.teacher)).register_forward_hook(self.tap)
        c, h, w = self.shape
        self.x = torch.zeros(r * b, c, h, w, device=dev).contiguous(memory_format=self.memory_format)
        self.x.requires_grad_(True)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.x), torch.zeros_like(self.x)
        self.step_count = torch.zeros((), device=dev)
        self.plateau = PlateauState(torch.full((r,), float(s.lr), device=dev), factor=0.1,
                                    patience=s.plateau_patience, min_lr=s.min_lr)
        self.labels = torch.zeros(r, b, dtype=torch.long, device=dev)
        self.targets = torch.zeros(r, b, device=dev)
        with torch.no_grad():
            self.feature_dim = self._feature_dim()
        self.centers = torch.zeros(r, b, self.feature_dim, device=dev)
        self.mask = torch.zeros(r, b, device=dev)
        self.term_names = ["bns", "target"] + (["mdc_lower", "mdc_upper"] if s.mdc else [])
        self.last_terms = torch.zeros(len(self.term_names), r, device=dev)
        self.lor_ops = LORSettings.from_variant(s.lor, s.aug_margin, s.rotation_degrees).ops
        static = {"coin": torch.zeros(r, dtype=torch.bool, device=dev), "theta": torch.zeros(r * b, 2, 5, device=dev)}
        self.compute = compile_loss(self._terms, self.fast.capture, dev)
        state = [self.x, self.exp_avg, self.exp_avg_sq, self.step_count, *self.plateau.tensors(), self.last_terms]
        self.runner = StepRunner(self._step, static, state, self.fast.capture)

    def _feature_dim(self) -> int:
        self.teacher(torch.zeros(1, *self.shape, device=self.device).contiguous(memory_format=self.memory_format))
        assert self.tap.features is not None
        return int(self.tap.features.shape[1])

    def _terms(self, x: torch.Tensor, coin: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """(terms, R) loss terms of one iteration, all on the device."""
        s, r = self.settings, self.runs
        inputs = x
        if self.lor_ops:
            cropped = apply_affine(x, theta, zero_outside="rotate" in self.lor_ops)
            inputs = torch.where(coin.repeat_interleave(self.size).view(-1, 1, 1, 1), cropped, x)
        self.bns.active = True
        logits = self.teacher(inputs.contiguous(memory_format=self.memory_format)).float()
        self.bns.active = False
        logits = logits.unflatten(0, (r, self.size))
        terms = [self.bns.loss(), torch.stack([target_loss(s.target_loss, logits[i], self.labels[i], self.targets[i])
                                               for i in range(r)])]
        if s.mdc:
            features = self.tap.features.float().unflatten(0, (r, self.size))
            hinges = [mdc_loss(features[i], self.centers[i], self.mask[i], s.margin_low, s.margin_up)
                      for i in range(r)]
            terms += [torch.stack([h[0] for h in hinges]), torch.stack([h[1] for h in hinges])]
        return torch.stack(terms)

    def _step(self) -> None:
        inputs = self.runner.inputs
        terms = self.compute(self.x, inputs["coin"], inputs["theta"])
        total = terms.sum(0)
        (grad,) = torch.autograd.grad(total.sum(), [self.x])
        with torch.no_grad():  # Adam, torch's arithmetic, per-run tensor lr (repeated per image)
            beta1, beta2 = ADAM_BETAS
            self.step_count.add_(1)
            bias_correction1 = 1 - torch.pow(beta1, self.step_count)
            bias_correction2_sqrt = (1 - torch.pow(beta2, self.step_count)).sqrt()
            self.exp_avg.lerp_(grad, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
            step_size = (self.plateau.lr / bias_correction1).repeat_interleave(self.size).view(-1, 1, 1, 1)
            self.x.sub_(step_size * (self.exp_avg / denom))
            self.plateau.step(total)
            self.last_terms.copy_(terms.detach())

    @torch.no_grad()
    def _reset(self, draws: list[BatchDraws], centers: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        self.x.copy_(torch.cat([d.x0 for d in draws]).to(self.device))
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        self.step_count.zero_()
        self.plateau.reset(float(self.settings.lr))
        self.labels.copy_(torch.stack([d.labels for d in draws]))
        self.targets.copy_(torch.stack([d.targets.float() for d in draws]))
        self.centers.zero_()
        self.mask.zero_()
        for i, pair in enumerate(centers):
            if pair is not None:
                self.centers[i].copy_(pair[0])
                self.mask[i].copy_(pair[1])

    def optimize(self, draws: list[BatchDraws], centers: list[tuple[torch.Tensor, torch.Tensor] | None],
                 on_iteration: Callable[[], None] | None = None) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """Run all iterations for the R batches; returns each run's CPU images and a record like the reference's."""
        start = time.perf_counter()
        self._reset(draws, centers)
        iterations = self.settings.iterations
        if self.lor_ops:
            coins = to_device(torch.tensor([d.coins for d in draws], dtype=torch.bool).T.contiguous(), self.device)
            thetas = to_device(torch.stack([d.thetas for d in draws], dim=1).flatten(1, 2), self.device)
        for it in range(iterations):
            if self.lor_ops:
                self.runner(coin=coins[it], theta=thetas[it])
            else:
                self.runner()
            if on_iteration is not None:
                on_iteration()
        with torch.no_grad():
            logits = self.teacher(self.x).unflatten(0, (self.runs, self.size))
            teacher_acc = (logits.argmax(-1) == self.labels).float().mean(1).tolist()
            terms = self.last_terms.tolist()
            lrs = self.plateau.lr.tolist()
            images = self.x.detach().float().cpu().clone().unflatten(0, (self.runs, self.size))  # own copy: x is reused
        seconds = time.perf_counter() - start
        out = []
        for i, d in enumerate(draws):
            pair = centers[i]
            final = {name: terms[k][i] for k, name in enumerate(self.term_names)}
            if pair is not None:
                checksum = float((pair[0] * pair[1].unsqueeze(1)).double().sum())
            out.append((images[i], {
                "final_losses": final, "final_total": sum(final.values()), "final_lr": lrs[i],
                "teacher_acc": teacher_acc[i], "mdc_images": int(pair[1].sum()) if pair is not None else 0,
                "center_checksum": checksum if pair is not None else 0.0, "lor_iterations": int(sum(d.coins)),
                "seconds": seconds / self.runs, "device": str(self.device), "ran_on": sitting(self.device),
                "stacked_runs": self.runs, "fast": self.fast.record(),
            }))
        return out

    def close(self) -> None:
        self.bns.remove()
        self.tap_handle.remove()


def centers_for(centers: ClassCenters | None, labels: torch.Tensor, device: torch.device):
    """The reference's use of MDC centres for a batch: None until a centre exists for one of its labels."""
    if centers is None:
        return None
    c, m = centers.lookup(labels)
    if c is None or not bool(m.any()):
        return None
    return c.to(device), m.to(device)


class FastBatchMaker:
    """Makes the batches of one reference-path set (`intraq.synthesis.intraq.generate`) on the fast path.

    Same draws, same batch files and record fields as `_optimize_batch`, plus the fast settings in each record;
    the optimizer (and its captured graph) is kept per batch size across batches. A batch resumes as a whole:
    the fast path writes no mid-batch checkpoint (a GPU batch takes seconds)."""

    def __init__(self, teacher: nn.Module, settings: SynthSettings, seed: int, shape: tuple[int, int, int],
                 num_classes: int, device: torch.device, fast: FastSettings) -> None:
        self.teacher, self.settings, self.seed, self.shape = teacher, settings, seed, shape
        self.num_classes, self.device, self.fast = num_classes, device, fast
        self.optimizers: dict[int, StackedBatchOptimizer] = {}

    def __call__(self, index: int, size: int, centers: ClassCenters | None,
                 on_iteration: Callable[[], object] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if size not in self.optimizers:
            self.optimizers[size] = StackedBatchOptimizer(self.teacher, self.settings, 1, size, self.shape,
                                                          self.device, self.fast)
        draws = draw_batch(self.seed, index, size, self.shape[0], self.shape[1], self.num_classes, self.settings)
        with self.fast.numeric_applied():  # the fast flags for this batch only (its record reads them inside)
            ((images, record),) = self.optimizers[size].optimize(
                [draws], [centers_for(centers, draws.labels, self.device)], on_iteration=on_iteration)
        record.update(batch=index, size=size, seed=batch_seed(self.seed, index))
        return images, draws.labels, record

    def close(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.close()
        self.optimizers.clear()


def generate_stacked(
    teacher: nn.Module, settings: SynthSettings, seeds: list[int], num_images: int, shape: tuple[int, int, int],
    num_classes: int, device: torch.device, fast: FastSettings | None = None, progress: bool = False,
    on_batch: Callable[[int, int, torch.Tensor, torch.Tensor, dict], None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, list[dict]]]:
    """R whole image sets (one per seed) made together: per run (images, labels, batch records).

    The same sets as the reference `generate` makes for each seed alone (its batch files and cache are the
    pipeline's business; this makes the images). `on_batch(run, k, images, labels, record)` sees each finished
    batch as it is made (`intraq.stacking` writes each case's batch file from it)."""
    fast = fast or FastSettings()
    bsz = settings.batch_size
    sizes = [min(bsz, num_images - k * bsz) for k in range((num_images + bsz - 1) // bsz)]
    centers = [ClassCenters(num_classes) if settings.mdc else None for _ in seeds]
    optimizers: dict[int, StackedBatchOptimizer] = {}
    out: list[tuple[list, list, list]] = [([], [], []) for _ in seeds]
    bar = tqdm(total=len(sizes) * settings.iterations, desc=f"synthesis x{len(seeds)} (fast)", disable=not progress)
    try:
        for k, size in enumerate(sizes):
            if size not in optimizers:
                optimizers[size] = StackedBatchOptimizer(teacher, settings, len(seeds), size, shape, device, fast)
            draws = [draw_batch(seed, k, size, shape[0], shape[1], num_classes, settings) for seed in seeds]
            pairs = [centers_for(c, d.labels, device) for c, d in zip(centers, draws, strict=True)]
            with fast.numeric_applied():  # the fast flags for these batches only, as FastBatchMaker scopes them
                results = optimizers[size].optimize(draws, pairs, on_iteration=bar.update)
            for i, ((images, record), d) in enumerate(zip(results, draws, strict=True)):
                record.update(batch=k, size=size, seed=batch_seed(seeds[i], k))
                if on_batch is not None:
                    on_batch(i, k, images, d.labels, record)
                out[i][0].append(images)
                out[i][1].append(d.labels)
                out[i][2].append(record)
                if centers[i] is not None and k < len(sizes) - 1:
                    centers[i].add_images(teacher, images.to(device), d.labels)
    finally:
        for optimizer in optimizers.values():
            optimizer.close()
        bar.close()
    return [(torch.cat(imgs), torch.cat(lbls), recs) for imgs, lbls, recs in out]
