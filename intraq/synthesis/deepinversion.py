"""Pure DeepInversion (and its ADI variant) as its own image generator (methods §3, trap T22).

Per batch: x ~ N(0, 1) in the teacher's normalized space, Adam on x only; every iteration the whole batch is
rolled circularly by one random (dy, dx) and (ImageNet) flipped with p = 0.5, and the loss

    main * CE(teacher(x'), y) + r_feature * R_feature + tv_l2 * TV_L2 + tv_l1 * TV_L1 + l2 * L2 [+ ADI term]

is taken on the jittered x'. ImageNet (setting_id 1, full resolution only, trap T17) warms the lr up over 100
iterations, then decays it by a cosine, and clips x to the valid pixel range after every step; the CIFAR
script keeps the lr constant and does not clip. The output is the lowest-loss snapshot of each batch.

Which tensor comes out differs between the released scripts, so each is a `snapshot` choice:
- the CIFAR script keeps `best_inputs = inputs.data` without a copy, so its "best" is the final iterate, and so
  was the ImageNet script's before NVlabs/DeepInversion@cb22f73 (it never lowered `best_cost`, which stayed
  1e4): `snapshot="last"`;
- the ImageNet script from cb22f73 on lowers `best_cost`, but takes its copy after `optimizer.step()` and the
  clip: the images one step past the iteration whose loss was lowest: `snapshot="after-step"`;
- the default `snapshot="best"` keeps the tensor the lowest loss was measured on, which both scripts intend
  (and the brief asks for).

As in `intraq.py`, batch k draws all its randomness from a CPU generator seeded by (seed, k) and is kept as a
file under `ctx.work_dir`, so a longer run reuses earlier batches and an interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from intraq.config import LOCATION_FIELDS, RunConfig, config_hash, to_dict
from intraq.data.base import Normalization
from intraq.errors import UserInputError
from intraq.synthesis.base import SYNTHESIZERS, SynthContext, SyntheticSet
from intraq.synthesis.batches import batch_seed, frozen, state_fingerprint
from intraq.synthesis.bn_stats import BNFeatureLoss
from intraq.synthesis.driver import BatchCheckpoint, run_batches, run_iterations
from intraq.synthesis.losses import adi_competition_loss

METHOD = "deepinversion"
PRESET_BY_DATASET = {"imagenet": "imagenet", "cifar10": "cifar", "cifar100": "cifar", "digits": "cifar"}
LR_SCHEDULES = ("warmup-cosine", "constant")
LABEL_MODES = ("random", "cyclic")
SNAPSHOTS = ("best", "after-step", "last")
RUN_CONFIG_FIELDS = ("num_images", "batch_size", "iterations")  # taken from cfg.synth, see effective_config


@dataclass
class DeepInversionConfig:
    """DeepInversion's own settings; the defaults are the ImageNet ones (imagenet_inversion.py, setting_id 1).

    Where the released code disagrees with itself the value used in its README and logs is the default:
    r_feature 0.01 (argparse default 0.05), batch 84 (argparse 64; the paper used 152), lr 0.2 (the README
    example uses 0.25). `num_images` is not a DeepInversion notion (it makes one batch per call); 5,120 is
    the suite's stage-1 count. `jitter` is in pixels at `reference_size`; `for_image_size` rescales it.
    """

    preset: str = "imagenet"
    num_images: int = 5120
    batch_size: int = 84
    iterations: int = 2000  # setting_id 1: 2k at full resolution (the 112-px phase of setting 0 is not used, T17)
    lr: float = 0.2
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    lr_schedule: str = "warmup-cosine"  # warmup-cosine | constant
    warmup_iterations: int = 100
    r_feature: float = 0.01
    first_bn_multiplier: float = 10.0
    tv_l2: float = 1e-4
    tv_l1: float = 0.0
    l2: float = 1e-5
    main_loss_multiplier: float = 1.0
    adi_scale: float = 0.0  # 0.2 for ADI ("used in the paper", README); needs SynthContext.student
    adi_temperature: float = 3.0
    jitter: int = 30  # circular roll by (dy, dx) in [-jitter, jitter]^2, one draw per iteration for the batch
    flip: bool = True  # horizontal flip of the whole batch with p = 0.5 per iteration
    clip: bool = True  # clamp to [-m/s, (1-m)/s] per channel after every step
    labels: str = "random"  # random: uniform (--random_label) | cyclic: 0, 1, ..., C-1, 0, ... per batch
    snapshot: str = "best"  # best: lowest-loss iterate | after-step: one step past it | last: final iterate
    reference_size: int = 224

    @classmethod
    def imagenet_preset(cls) -> DeepInversionConfig:
        """ImageNet, setting_id 1 (the defaults)."""
        return cls()

    @classmethod
    def cifar_preset(cls) -> DeepInversionConfig:
        """cifar10/deepinversion_cifar10.py with the README's "paper" command (methods §3.4).

        Adam with PyTorch's default betas (the script passes only the lr), no lr schedule, no clipping, no flip,
        no first-BN multiplier; r_feature 10 and lr 0.05 from the paper command (argparse: 100 and 0.1).
        """
        return cls(
            preset="cifar", batch_size=256, iterations=2000, lr=0.05, betas=(0.9, 0.999), lr_schedule="constant",
            warmup_iterations=0, r_feature=10.0, first_bn_multiplier=1.0, tv_l2=2.5e-5, tv_l1=0.0, l2=0.0,
            jitter=2, flip=False, clip=False, labels="cyclic", reference_size=32,
        )

    def for_image_size(self, image_size: int) -> DeepInversionConfig:
        """The same settings with the jitter scaled from `reference_size` to `image_size` (at least 1 px)."""
        if image_size == self.reference_size:
            return dataclasses.replace(self)
        jitter = max(1, round(self.jitter * image_size / self.reference_size)) if self.jitter > 0 else 0
        return dataclasses.replace(self, jitter=jitter, reference_size=image_size)

    def validate(self) -> None:
        """Fail early, with the field's name, on values the loop cannot run with."""
        if min(self.num_images, self.batch_size, self.iterations) <= 0:
            raise UserInputError("deepinversion: num_images, batch_size and iterations must be positive")
        for name, value, known in (
            ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
            ("labels", self.labels, LABEL_MODES),
            ("snapshot", self.snapshot, SNAPSHOTS),
        ):
            if value not in known:
                raise UserInputError(f"deepinversion: unknown {name} {value!r}; expected one of {known}")
        if self.jitter < 0 or self.warmup_iterations < 0:
            raise UserInputError("deepinversion: jitter and warmup_iterations must be >= 0")


def preset_for(dataset_name: str) -> DeepInversionConfig:
    """ImageNet values for imagenet, the CIFAR script's for cifar10/cifar100/digits."""
    if dataset_name not in PRESET_BY_DATASET:
        raise UserInputError(
            f"deepinversion has no preset for data set {dataset_name!r}; known: {', '.join(PRESET_BY_DATASET)}"
        )
    if PRESET_BY_DATASET[dataset_name] == "imagenet":
        return DeepInversionConfig.imagenet_preset()
    return DeepInversionConfig.cifar_preset()


def effective_config(cfg: RunConfig, dataset_name: str, image_size: int) -> DeepInversionConfig:
    """The data set's preset, jitter scaled to the image size, with num_images, batch_size and iterations
    taken from `cfg.synth` (always: that is how profiles shrink a run; set them to 2000 iterations etc. for the
    official scale) and the snapshot from `synth.di_snapshot`. Every other value is the preset's."""
    base = preset_for(dataset_name).for_image_size(image_size)
    overrides: dict[str, Any] = {name: int(getattr(cfg.synth, name)) for name in RUN_CONFIG_FIELDS}
    di = dataclasses.replace(base, **overrides, snapshot=cfg.synth.di_snapshot)
    di.validate()
    return di


# ----------------------------------------------------------------------------------------------- losses


def _differences(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Horizontal, vertical and the two diagonal finite differences of a (B, C, H, W) batch."""
    return (
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    )


def total_variation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TV-L1, TV-L2): sum of mean |d| and sum of Frobenius norms ‖d‖ over the 4 difference tensors d."""
    diffs = _differences(x)
    tv_l1 = sum(d.abs().mean() for d in diffs)
    tv_l2 = sum(torch.linalg.vector_norm(d) for d in diffs)
    return tv_l1, tv_l2  # type: ignore[return-value]


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-image L2 norm (the ImageNet script; the CIFAR one, with weight 0, uses ‖batch‖)."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def jitter_flip(x: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """Circular roll of the whole batch by (dy, dx) pixels, then an optional horizontal flip."""
    out = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return torch.flip(out, dims=(3,)) if flip else out


def clip_bounds(norm: Normalization, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel valid range [-m/s, (1-m)/s] of normalized pixels, shaped (1, C, 1, 1)."""
    mean = torch.tensor(norm.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return -mean / std, (1.0 - mean) / std


def lr_at(iteration: int, base_lr: float, total: int, warmup: int, schedule: str) -> float:
    """lr of 0-based `iteration`: base·(i+1)/warmup during warm-up, then ½(1+cos(π·e/(total-warmup)))·base."""
    if schedule == "constant":
        return base_lr
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (iteration - warmup) / (total - warmup))) * base_lr


def draw_labels(mode: str, size: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random labels, or 0..C-1 repeated from 0 in each batch (the CIFAR script's fixed targets)."""
    if mode == "cyclic":
        return torch.arange(size) % num_classes
    return torch.randint(0, num_classes, (size,), generator=generator)


# ----------------------------------------------------------------------------------------------- loop


def _draw_jitter(di: DeepInversionConfig, generator: torch.Generator) -> list[tuple[int, int, bool]]:
    """One (dy, dx) and one flip coin per iteration, drawn in iteration order, so a run's first k iterations do
    not depend on how many follow (drawn up front: a resumed batch redraws the same ones)."""
    draws = []
    for _ in range(di.iterations):
        dy, dx = torch.randint(-di.jitter, di.jitter + 1, (2,), generator=generator).tolist()
        flip = di.flip and bool(torch.rand((), generator=generator) < 0.5)
        draws.append((dy, dx, flip))
    return draws


def _optimize_batch(
    ctx: SynthContext, di: DeepInversionConfig, index: int, size: int, checkpoint: BatchCheckpoint, progress: tqdm
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Optimize one batch from noise (or from its checkpoint); returns CPU float32 images, int64 labels and a
    record of the run."""
    start = time.perf_counter()
    device, teacher, data = ctx.device, ctx.teacher, ctx.data
    seed = batch_seed(ctx.cfg.seed, index)
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(size, data.channels, data.image_size, data.image_size, generator=generator)
    labels = draw_labels(di.labels, size, data.num_classes, generator)
    jitter = _draw_jitter(di, generator)

    x = x0.to(device).requires_grad_(True)
    labels_d = labels.to(device)
    low, high = clip_bounds(data.norm, device)
    optimizer = torch.optim.Adam([x], lr=di.lr, betas=di.betas, eps=di.eps)
    best = x.detach().clone()
    best_cost = torch.full((), math.inf, device=device)
    trace = torch.zeros(di.iterations, device=device)  # kept on the device: no host sync per iteration
    student = ctx.student if di.adi_scale != 0 else None
    last: dict[str, Any] = {"terms": {}, "lr": di.lr}
    with BNFeatureLoss(teacher) as bnf:

        def compute(it: int) -> torch.Tensor:
            dy, dx, flip = jitter[it]
            last["lr"] = lr_at(it, di.lr, di.iterations, di.warmup_iterations, di.lr_schedule)
            for group in optimizer.param_groups:
                group["lr"] = last["lr"]
            optimizer.zero_grad(set_to_none=True)
            inputs = jitter_flip(x, dy, dx, flip)
            logits = teacher(inputs)
            tv_l1, tv_l2 = total_variation(inputs)
            terms = {
                "main": di.main_loss_multiplier * F.cross_entropy(logits, labels_d),
                "r_feature": di.r_feature * bnf.loss(di.first_bn_multiplier),
                "tv_l2": di.tv_l2 * tv_l2,
                "tv_l1": di.tv_l1 * tv_l1,
                "l2": di.l2 * l2_prior(inputs),
            }
            if student is not None:
                terms["adi"] = adi_competition_loss(student(inputs), logits, di.adi_temperature, di.adi_scale)
            last["terms"] = terms
            total = sum(terms.values())
            total.backward()
            return total

        def update(it: int, total: torch.Tensor) -> None:
            with torch.no_grad():
                cost = total.detach()
                trace[it] = cost
                better = cost < best_cost
                if di.snapshot != "after-step":  # the tensor this loss was measured on
                    best.copy_(torch.where(better, x.detach(), best))
                best_cost.copy_(torch.where(better, cost, best_cost))
            optimizer.step()
            with torch.no_grad():
                if di.clip:
                    x.clamp_(low, high)
                if di.snapshot == "after-step":  # the ImageNet script's copy, taken after the step and the clip
                    best.copy_(torch.where(better, x.detach(), best))

        def snapshot(done: int) -> dict[str, Any]:
            state = {"x": x.detach(), "best": best, "best_cost": best_cost, "trace": trace}
            return {"iteration": done, "adam": optimizer.state[x], **state}

        state = checkpoint.load()
        if state is not None:
            with torch.no_grad():
                for name, tensor in (("x", x), ("best", best), ("best_cost", best_cost), ("trace", trace)):
                    tensor.copy_(state[name])
            optimizer.state[x] = {k: v.to(device) for k, v in state["adam"].items()}
        start_it = 0 if state is None else state["iteration"]
        run_iterations(start_it, di.iterations, compute, update, snapshot, checkpoint, progress)
    terms, lr = last["terms"], last["lr"]
    with torch.no_grad():
        out = x.detach() if di.snapshot == "last" else best
        if di.clip:  # only the initial noise is out of range, and only it could be the "best" unclipped tensor
            out = out.clamp(low, high)
        teacher_acc = (teacher(out).argmax(1) == labels_d).float().mean()
    trace_cpu = trace.cpu()
    record: dict[str, Any] = {
        "batch": index,
        "size": size,
        "seed": seed,
        "final_losses": {k: float(v.detach()) for k, v in terms.items()},
        "final_total": float(trace_cpu[-1]),
        "best_total": float(trace_cpu.min()),
        "best_iteration": int(trace_cpu.argmin()),
        "loss_trace": trace_cpu.tolist(),
        "final_lr": lr,
        "teacher_acc": float(teacher_acc),
        "seconds": time.perf_counter() - start,
        "device": str(device),
    }
    return out.float().cpu(), labels.long(), record


def cache_key(ctx: SynthContext, di: DeepInversionConfig) -> str:
    """Hash of everything that decides the images except num_images (and file locations)."""
    key: dict[str, Any] = {
        "method": METHOD,
        "seed": ctx.cfg.seed,
        "data": to_dict(ctx.cfg.data),
        "teacher": to_dict(ctx.cfg.teacher),
        "deepinversion": {k: v for k, v in to_dict(di).items() if k != "num_images"},
        "image_size": ctx.data.image_size,
        "num_classes": ctx.data.num_classes,
        "norm": [list(ctx.data.norm.mean), list(ctx.data.norm.std)],
        "teacher_state": state_fingerprint(ctx.teacher),
    }
    if di.adi_scale != 0 and ctx.student is not None:
        key["student_state"] = state_fingerprint(ctx.student)
    return config_hash(key, exclude=LOCATION_FIELDS)


def generate_deepinversion(ctx: SynthContext, di: DeepInversionConfig | None = None) -> SyntheticSet:
    """Make (or extend, or resume) a DeepInversion set.

    `di=None` uses `effective_config`: the data set's preset with num_images, batch_size and iterations from
    `ctx.cfg.synth`. A given `di` is used exactly as it is (no preset, no overrides, no jitter rescaling).
    """
    wall_start = time.perf_counter()
    di = di if di is not None else effective_config(ctx.cfg, ctx.data.name, ctx.data.image_size)
    di.validate()
    if di.adi_scale != 0:
        if ctx.student is None:
            raise UserInputError(
                f"deepinversion with adi_scale={di.adi_scale} needs a student network (SynthContext.student)"
            )
        if {id(m) for m in ctx.teacher.modules()} & {id(m) for m in ctx.student.modules()}:
            raise ValueError("the ADI student shares modules with the teacher; pass a separate copy")
    key = cache_key(ctx, di)
    folder = Path(ctx.work_dir) / f"{METHOD}-{key}"
    student = ctx.student if di.adi_scale != 0 else None
    with frozen(ctx.teacher), frozen(student):
        batches = run_batches(
            folder, di.num_images, di.batch_size, (ctx.data.channels, ctx.data.image_size),
            lambda k, size, checkpoint, bar: _optimize_batch(ctx, di, k, size, checkpoint, bar),
            di.iterations, f"{METHOD} synthesis", ctx.progress, postfix_loss="best_total",
        )
    records = batches.records
    presets = {"imagenet": DeepInversionConfig.imagenet_preset, "cifar": DeepInversionConfig.cifar_preset}
    effective = to_dict(di)
    differs = None
    if di.preset in presets:
        preset_values = to_dict(presets[di.preset]())
        differs = {k: [v, effective[k]] for k, v in preset_values.items() if effective[k] != v}
    low, high = clip_bounds(ctx.data.norm)
    meta: dict[str, Any] = {
        "method": METHOD,
        "preset": di.preset,
        "effective": effective,
        "differs_from_preset": differs,  # field -> [preset value, value used]
        "clip_range": {"low": low.flatten().tolist(), "high": high.flatten().tolist()} if di.clip else None,
        "config_hash": key,
        "seed": ctx.cfg.seed,
        "batch_losses": [dict(r["final_losses"], total=r["final_total"], best=r["best_total"]) for r in records],
        **batches.meta(),
        "wall_time_s": time.perf_counter() - wall_start,
        "device": str(ctx.device),
    }
    return SyntheticSet(images=torch.cat(batches.images), labels=torch.cat(batches.labels).long(), meta=meta)


@SYNTHESIZERS.register(METHOD)
def synthesize_deepinversion(ctx: SynthContext) -> SyntheticSet:
    """DeepInversion with the data set's preset (ImageNet setting_id 1, or the CIFAR script's values).

    num_images, batch_size and iterations come from `ctx.cfg.synth` (so profiles can shrink a run); every
    other value is the preset's and is recorded in meta["effective"] (meta["differs_from_preset"] lists the
    overridden ones and the rescaled jitter).
    """
    return generate_deepinversion(ctx)
