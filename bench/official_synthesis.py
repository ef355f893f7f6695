"""Run the official IntraQ image synthesis (zysxmu/IntraQ `data_generate/distill_data.py`) on our teacher.

    python bench/official_synthesis.py DATA_ROOT --official ../IntraQ --profile cifar10 --batches 1 --threads 1

Why: our synthesis is tested against our own reference path, and the authors' stage 2 diverges on our images as
ours does (`bench/official_stage2.py`). What their generator makes from the same teacher says whether our images
are what theirs would be: the same loss terms at the end of a batch, the same teacher accuracy on the result.
The official `DistillData` is imported from a checkout the user names (never copied); the teacher is mapped into
its pytorchcv ResNet-20 (checked by equal logits), CUDA calls run on the CPU, ReduceLROnPlateau's `verbose=False`
(an argument torch has since dropped; it only printed) is dropped, and the CIFAR-10 script's settings
(`run_generate_cifar10.sh`: batch 256, targetPro 0.95, margins 0.05/0.8, augMargin 0.5) are passed as it passes them.

The official group runs five batches and writes them only at its end; this harness subclasses `DistillData` only
to keep each finished batch (the images and labels it hands to `add_current_data_feature`) and stop after
`--batches`. It reads each batch's last-iteration losses from the official per-iteration print. Python's `random`,
NumPy and torch are seeded with `--seed` (the official script seeds nothing). Each finished batch is saved in our
batch-file format (so `bench/official_stage2.py --images` and `bench/probe_finetune.py` can read it) beside a
record (losses, teacher accuracy, image statistics, ours beside it when `--ours` names our batch file, both
commits, machine, seconds) under results/diagnostics/official-synthesis/.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import random
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from intraq.artifacts import save_json, save_torch
from intraq.config import apply_overrides, to_dict
from intraq.data import build_data
from intraq.device import pick_device
from intraq.pipeline import RunPaths, teacher_identity
from intraq.profiles import get_profile
from intraq.results import git_commit, machine_info, now_utc
from intraq.tables import INTRAQ_BASE
from intraq.teacher.load import get_teacher


def _sibling(name: str) -> types.ModuleType:
    """A script beside this one, imported by path (bench/ is not a package; sys.path stays as it was)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_stage2 = _sibling("official_stage2")
check_checkout, cuda_on_cpu, stub_module = _stage2.check_checkout, _stage2.cuda_on_cpu, _stage2.stub_module
official_commit, official_teacher = _stage2.official_commit, _stage2.official_teacher
official_parser, parse_official_args = _stage2.official_parser, _stage2.parse_official_args

# What run_generate_cifar10.sh passes to generate_data.py.
CIFAR10_SCRIPT = {"model_name": "resnet20_cifar10", "batch_size": 256, "targetPro": 0.95, "cosineMargin": 0.05,
                  "cosineMargin_upper": 0.8, "augMargin": 0.5}


class _Enough(Exception):
    """Raised inside the official loop once the asked-for batches are done."""


class LossTap(io.TextIOBase):
    """Stands in for stdout while the official loop prints: keeps each batch's last iteration, shows progress."""

    def __init__(self, iterations: int) -> None:
        self.last: dict[int, dict[str, float]] = {}
        self.iterations, self.pending = iterations, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            parsed = parse_iteration(line)
            if parsed is None:
                continue
            batch, it, values = parsed
            self.last[batch] = {"iteration": it, **values}
            if it % 100 == 99 or it == self.iterations - 1:
                sys.__stdout__.write(f"official batch {batch} iteration {it + 1}/{self.iterations}: "
                                     + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) + "\n")
                sys.__stdout__.flush()
        return len(text)


def parse_iteration(line: str) -> tuple[int, int, dict[str, float]] | None:
    """`i it 'lr' lr 'd_acc' acc 'mean_loss' x ...` as distill_data.py prints it, or None for other lines."""
    tokens = line.split()
    if len(tokens) < 4 or tokens[2] != "lr" or not (tokens[0].isdigit() and tokens[1].isdigit()):
        return None
    values = {tokens[k]: float(tokens[k + 1]) for k in range(2, len(tokens) - 1, 2)}
    return int(tokens[0]), int(tokens[1]), values


def run(args: argparse.Namespace) -> list[Path]:
    checkout = Path(args.official).resolve()
    check_checkout(checkout, ("data_generate/distill_data.py", "data_generate/run_generate_cifar10.sh",
                              "pytorchcv/model_provider.py"))
    cuda_on_cpu()
    stub_module("progress.bar", Bar=object)  # a progress-bar package its training utils import, unused here
    sys.path[:0] = [str(checkout / "data_generate"), str(checkout)]  # its utils first, then the vendored pytorchcv
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau

    class PlateauWithoutVerbose(plateau):  # type: ignore[misc, valid-type]
        """Its `verbose=False` (it only printed) is an argument torch no longer takes; everything else as passed."""

        def __init__(self, *args: Any, verbose: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    torch.optim.lr_scheduler.ReduceLROnPlateau = PlateauWithoutVerbose  # type: ignore[misc]
    import distill_data  # type: ignore[import-not-found]
    from pytorchcv.model_provider import get_model  # type: ignore[import-not-found]

    cfg = apply_overrides(get_profile(args.profile), [*INTRAQ_BASE, f"seed={args.seed}", *args.overrides])
    device = pick_device("cpu")
    data = build_data(cfg.data)
    ours = get_teacher(cfg.teacher, data, device, RunPaths.default(args.artifacts).artifacts, progress=False)
    test_x, _ = data.test.batch(slice(None, 64))
    teacher = official_teacher(get_model, ours.model, test_x)

    kept: list[tuple[np.ndarray, np.ndarray]] = []

    class KeepingDistillData(distill_data.DistillData):
        def add_current_data_feature(self, teacher_model, last_feature_dict, hooks, old_data, old_label):  # noqa: ANN001, ANN201
            kept.append((old_data.copy(), old_label.copy()))
            if len(kept) == args.batches:
                raise _Enough
            return super().add_current_data_feature(teacher_model, last_feature_dict, hooks, old_data, old_label)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tap = LossTap(1000)
    out_dir = Path(args.out)
    tic = time.perf_counter()
    stdout, sys.stdout = sys.stdout, tap
    try:  # the scratch folder is where it looks for earlier groups' pickles: none
        with tempfile.TemporaryDirectory() as scratch:
            KeepingDistillData().getDistilData_hardsample_cosineDistanceEMA_interClass_aug(
                teacher_model=teacher, group=args.group, save_path_head=scratch, **CIFAR10_SCRIPT)
    except _Enough:
        pass
    finally:
        sys.stdout = stdout
    seconds = time.perf_counter() - tic
    written = []
    for batch, (images, labels) in enumerate(kept):
        x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
        with torch.no_grad():
            acc = float((teacher(x).argmax(1) == y).float().mean())
        losses = tap.last.get(batch, {})
        record: dict[str, Any] = {
            "what": "official IntraQ synthesis (zysxmu/IntraQ data_generate/distill_data.py) on our teacher "
                    "(bench/official_synthesis.py)",
            "official_repo": "zysxmu/IntraQ", "official_commit": args.official_commit or official_commit(checkout),
            "official_settings": {**CIFAR10_SCRIPT, "group": args.group}, "batch": batch, "seed": args.seed,
            "last_iteration": losses, "bns": losses.get("mean_loss", np.nan) + losses.get("var_loss", np.nan),
            "teacher_acc_on_images": acc, "image_mean": x.mean((0, 2, 3)).tolist(),
            "image_std": x.std((0, 2, 3)).tolist(),
            "profile": cfg.profile, "teacher": ours.info, "teacher_id": teacher_identity(ours.info),
            "config": to_dict(cfg), "git_commit": git_commit(), "machine": machine_info(device),
            "seconds_all_batches": seconds, "finished": now_utc(),
        }
        if args.ours:
            mine = torch.load(args.ours, map_location="cpu", weights_only=False)
            record["ours"] = {"file": str(args.ours), "record": mine["record"],
                              "image_mean": mine["images"].mean((0, 2, 3)).tolist(),
                              "image_std": mine["images"].std((0, 2, 3)).tolist()}
        name = f"{cfg.profile}-group{args.group}-batch{batch}-seed{args.seed}"
        save_torch({"images": x, "labels": y, "record": record}, out_dir / "batches" / f"batch{batch:05d}-n{len(y)}.pt")
        written.append(save_json(record, out_dir / f"{name}.json"))
        print(f"batch {batch}: BNS {record['bns']:.4g}, target {losses.get('loss_target', np.nan):.4g}, teacher "
              f"accuracy on the images {acc:.3f} -> {written[-1]}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = official_parser(__doc__, "results/diagnostics/official-synthesis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group", type=int, default=1, help="the official group (1-4); earlier groups: none here")
    parser.add_argument("--batches", type=int, default=1, help="stop after this many of the group's five batches")
    parser.add_argument("--ours", default=None, help="our batch file to set beside it (e.g. batch00000-n256.pt)")
    args = parse_official_args(parser, argv)
    if not 1 <= args.batches <= 5:
        parser.error("--batches must be 1..5 (an official group has five)")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
