"""Probe the first steps of stage-2 fine-tuning of one case: per-step KD loss, gradient norm and agreement.

    python bench/probe_finetune.py --profile cifar10-cpu --steps 50 --set finetune.lr=1e-4 -- DATA_ROOT

Why: a diverging fine-tuning shows in its first few steps; this measures them directly (one process, under a
minute at cifar10-cpu) instead of a whole case. It builds the case's image set (reused from the artifacts when it
exists), calibrates the quantized student as the case does, then takes `--steps` SGD steps with the case's
optimizer, augmentation and KD loss on random batches, and evaluates test top-1 once at the end. The record
(config, seed, commit, machine, seconds, every step) is written to results/diagnostics/finetune-probe/.

With `--sharpness N` it first measures the KD loss's sharpness on one augmented batch of its own (N power
iterations; the steps' batches are drawn as without it) and the lr bound of the case's SGD at that sharpness
(`intraq.finetune.stability`), so the record holds the prediction beside what the steps then did.

With `--state FILE` (a case's stage-2 checkpoint, `finetune.pt`) the student is that checkpoint's, after however
many epochs it trained, instead of a freshly calibrated one: the same measurement along a run, to see whether the
sharpness grows while it trains (the curve run of issue 17 diverged at lr 1e-5 although it began at 0.27 x the
bound). Its steps then start from the checkpoint's weights with a fresh optimizer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from intraq.artifacts import load_torch, save_json, sha256_of
from intraq.config import RunConfig, apply_overrides, config_hash, to_dict
from intraq.data import build_data
from intraq.device import pick_device
from intraq.errors import UserInputError
from intraq.evaluate import evaluate
from intraq.finetune.augment import make_finetune_augment
from intraq.finetune.stability import kd_sharpness
from intraq.finetune.trainer import Augment, calibrate, kd_backward, make_optimizer
from intraq.pipeline import RunPaths, case_hash, get_image_set, make_calibration_source, teacher_identity
from intraq.profiles import get_profile
from intraq.quantize import quantize_model
from intraq.results import git_commit, machine_info, now_utc
from intraq.tables import INTRAQ_BASE
from intraq.teacher.load import get_teacher


def probe(args: argparse.Namespace) -> dict:
    cfg = apply_overrides(get_profile(args.profile), [*INTRAQ_BASE, f"seed={args.seed}", *args.overrides])
    device = pick_device(args.device)
    torch.manual_seed(cfg.seed)
    paths = RunPaths.default(args.artifacts)
    data = build_data(cfg.data)
    teacher = get_teacher(cfg.teacher, data, device, paths.artifacts, progress=False)
    image_set, _ = get_image_set(cfg, teacher, data, device, paths, progress=True)
    images, labels = image_set.images, image_set.labels
    tic = time.perf_counter()
    student = quantize_model(teacher.model, cfg.quant).to(device)
    ft = cfg.finetune
    state = load_stage2_state(args.state, student, f"{case_hash(cfg)}-seed{cfg.seed}") if args.state else None
    if state is None:
        calibrate(student, make_calibration_source(cfg, teacher.model, data, images, device),
                  ft.calib_epochs * ft.iters_per_epoch)
    student.eval().requires_grad_(True)
    model = teacher.model.eval()
    optimizer = make_optimizer(student, ft)
    augment = make_finetune_augment(ft)
    sharpness = measure_sharpness(student, model, images, labels, augment, cfg, args.sharpness, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = []
    for step in range(args.steps):
        idx = torch.randint(len(images), (min(ft.batch_size, len(images)),), generator=generator)
        x = augment(images[idx].to(device), generator)
        loss, student_logits, teacher_logits = kd_backward(student, model, x, labels[idx].to(device), optimizer, ft)
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), float("inf"))
        optimizer.step()
        agreement = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        steps.append({"step": step, "kd_loss": loss.item(), "grad_norm": grad_norm.item(),
                      "agreement_with_teacher": agreement.item()})
        print(f"step {step:3d}  KD loss {loss.item():9.2f}  grad norm {grad_norm.item():10.1f}  "
              f"agreement {agreement.item():.2f}", flush=True)
    accuracy = evaluate(student, data.test, ft.eval_batch_size, device)
    print(f"test top-1 after {args.steps} steps: {accuracy:.2f}%")
    return {
        "what": "first steps of stage-2 fine-tuning (bench/probe_finetune.py)",
        "profile": cfg.profile, "seed": cfg.seed, "steps": steps, "test_top1_after_steps": accuracy,
        **({"sharpness": sharpness} if sharpness else {}),
        **({"state": state} if state else {}),
        "image_set": {k: v for k, v in image_set.meta.items() if not isinstance(v, torch.Tensor)},
        "teacher": teacher.info, "teacher_id": teacher_identity(teacher.info), "config": to_dict(cfg),
        "overrides": list(args.overrides), "git_commit": git_commit(), "machine": machine_info(device),
        "seconds": time.perf_counter() - tic, "finished": now_utc(),
    }


def load_stage2_state(path: Path, student: torch.nn.Module, case: str) -> dict:
    """Load a stage-2 checkpoint's student (weights and frozen activation ranges) into `student`; what the record
    says of it: the file's sha256, the last finished epoch and the history's last entry. The file is checked
    against its sha256 file as the trainer checks it; one whose folder names another case is loaded with a
    warning (the bit widths are no part of the state, so nothing else would tell)."""
    try:
        blob = load_torch(path, remedy="pass a case's finetune.pt as written by its run")
    except UserInputError as error:
        raise SystemExit(f"error: {error}") from error
    if isinstance(blob, dict) and "students" in blob:
        raise SystemExit(f"error: {path} is a fast-path checkpoint (finetune-fast.pt, one state per stacked run); "
                         "--state reads the reference path's finetune.pt")
    if not isinstance(blob, dict) or "student" not in blob or "epoch" not in blob:
        raise SystemExit(f"error: {path} is not a stage-2 checkpoint (no 'student'/'epoch'); pass a case's "
                         "finetune.pt")
    if path.parent.name != case:
        print(f"warning: {path} is not in this case's run folder ({case}); make sure --profile, --seed and --set "
              "describe the run it comes from", flush=True)
    student.load_state_dict(blob["student"])
    last = (blob.get("history") or [{}])[-1]
    return {"path": str(path), "sha256": sha256_of(path), "epoch": blob["epoch"],
            "last_history_entry": {k: v for k, v in last.items() if k != "sharpness"}}


def measure_sharpness(
    student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, augment: Augment,
    cfg: RunConfig, iterations: int, device: torch.device,
) -> dict | None:
    """Top Hessian eigenvalue of the KD loss on one batch (its own generator) and the optimizer's lr bound there:
    the same measurement, on the same batch, as a case's record with `finetune.sharpness_iters`."""
    if iterations <= 0:
        return None
    ft = cfg.finetune
    result = kd_sharpness(student, teacher, images, labels, augment, ft, cfg.seed, iterations, device)
    if "error" in result:
        print(f"warning: the sharpness measurement failed: {result['error']}", flush=True)
        return result
    if result["lr_bound"] is None:
        print(f"warning: the largest-magnitude Hessian eigenvalue is negative ({result['top_eigenvalue']:.1f}); no lr "
              "bound follows from it", flush=True)
        return result
    print(f"sharpness {result['top_eigenvalue']:.1f} ({result['iterations']} iterations"
          f"{'' if result['converged'] else ', not converged'}): lr bound {result['lr_bound']:.3g}, lr {ft.lr:g} = "
          f"{result['lr_over_bound']:.2f} x bound", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cifar10-cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sharpness", type=int, default=0, metavar="N",
                        help="first measure the KD loss's sharpness with N power iterations (0: skip)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--state", type=Path, default=None, metavar="FINETUNE_PT",
                        help="start from this stage-2 checkpoint's student instead of calibrating one")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--out", default="results/diagnostics/finetune-probe")
    args = parser.parse_args(argv)
    if args.state is not None and not args.state.is_file():  # before the teacher and the images are built
        raise SystemExit(f"error: --state {args.state}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = probe(args)
    name = config_hash({"config": record["config"], "steps": args.steps,
                        **({"sharpness": args.sharpness} if args.sharpness else {}),
                        **({"state": record["state"]["sha256"]} if args.state else {})})
    out = save_json(record, Path(args.out) / f"{record['profile']}-{name}-seed{record['seed']}.json")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
