"""Run the official IntraQ stage 2 (zysxmu/IntraQ `trainer_direct.py`) on our teacher and our synthetic images.

    python bench/official_stage2.py DATA_ROOT --official ../IntraQ --profile cifar10 --epochs 6 --threads 1 \
        --images resume/cifar10-official/synthesis/intraq-v2-21f539df6743

(those images: `git checkout edfd2bd -- resume/cifar10-official`; deleted from the tree, see resume/README.md; they
were made by the 86.90% teacher, so add `--set teacher.checkpoint=teachers/resnet20-cifar10.pt --set
teacher.train_epochs=30 --set teacher.train_weight_decay=5e-4`: `cifar10` now names the 87.74% one)

Why: our official-strength IntraQ cell diverges in its first fine-tuning epoch. Running the authors' own trainer on
exactly the same teacher and images, beside ours, tells whether that is our code (the official trainer trains) or
the teacher and images (it diverges too). The official code is imported from a checkout the user names, never
copied here; this script only adapts its inputs:

- the teacher's weights go into the official code's vendored pytorchcv `resnet20_cifar10` (same layout; checked by
  equal logits before anything runs),
- the synthetic batches are written as the four `Path_to_data_pickle{1..4}.pickle` / `Path_to_label_pickle...` files
  its `direct_dataset` reads (the images in order, split in four parts), in a scratch folder,
- settings come from the checkout's `cifar10_resnet20.hocon` (scalars and lists only), seed = id + 1 as main_direct,
- CUDA calls run on the CPU (`.cuda()` is the identity; one device counted), and two imports it only logs with
  (`options`, `termcolor`) are stubbed.

The epoch loop is main_direct's `run()` (unfreeze the activation ranges in epochs 0-3, train, freeze, test); the
trainer is the official `Trainer`, subclassed only to measure each fine-tuning step (loss, gradient norm before the
step, agreement with the teacher). It stops after the first epoch with a non-finite loss. The record (per-epoch
test top-1, per-step measurements, both commits, teacher identity, machine, seconds) is written after every epoch to
results/diagnostics/official-stage2/.
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from intraq.artifacts import save_json
from intraq.config import apply_overrides, to_dict
from intraq.data import build_data
from intraq.device import pick_device
from intraq.pipeline import RunPaths, teacher_identity
from intraq.profiles import get_profile
from intraq.results import git_commit, machine_info, now_utc
from intraq.tables import INTRAQ_BASE
from intraq.teacher.load import get_teacher

OFFICIAL_CONFIG = "cifar10_resnet20.hocon"
OFFICIAL_MODEL = "resnet20_cifar10"


def read_hocon(path: Path) -> dict[str, Any]:
    """The flat `key = value  # comment` lines of an official hocon file (all its cifar10 settings are such)."""
    settings: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        settings[key] = ast.literal_eval(value)
    return settings


def check_checkout(checkout: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if not (checkout / name).is_file():
            raise SystemExit(f"error: {checkout} is not a checkout of zysxmu/IntraQ (no {name}); "
                             "fetch it (git clone https://github.com/zysxmu/IntraQ) and pass its folder as --official")


def stub_module(name: str, **attrs: Any) -> None:
    """An import the official code makes only for logging or progress bars, as an empty module (unless installed);
    a dotted name gets its parent package too."""
    parent = name.rpartition(".")[0]
    if parent:
        sys.modules.setdefault(parent, types.ModuleType(parent))
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules.setdefault(name, module)


def cuda_on_cpu() -> None:
    """The official code calls `.cuda()` everywhere; here those calls keep tensors and modules on the CPU."""
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.cuda.device_count = lambda: 1


def import_official(checkout: Path) -> types.SimpleNamespace:
    """Import the official modules from `checkout`, with CUDA calls on the CPU."""
    check_checkout(checkout, ("main_direct.py", "trainer_direct.py", OFFICIAL_CONFIG, "pytorchcv/model_provider.py"))
    stub_module("options", Option=None)  # its hocon reader; the settings come from read_hocon here
    stub_module("termcolor", colored=lambda text, *a, **k: text)
    cuda_on_cpu()
    sys.path.insert(0, str(checkout))
    import main_direct  # type: ignore[import-not-found]
    import trainer_direct  # type: ignore[import-not-found]
    import utils as official_utils  # type: ignore[import-not-found]
    from pytorchcv.model_provider import get_model  # type: ignore[import-not-found]

    return types.SimpleNamespace(main=main_direct, trainer=trainer_direct, utils=official_utils, get_model=get_model)


def official_commit(checkout: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def official_teacher(get_model: Callable[..., nn.Module], ours: nn.Module, probe: torch.Tensor) -> nn.Module:
    """Our teacher's weights in the official code's pytorchcv ResNet-20, checked by equal logits on `probe`."""
    model = get_model(OFFICIAL_MODEL, pretrained=False)
    theirs, mine = model.state_dict(), ours.state_dict()
    if len(theirs) != len(mine) or any(a.shape != b.shape for a, b in zip(theirs.values(), mine.values(), strict=True)):
        raise SystemExit("error: the teacher's layout differs from pytorchcv resnet20_cifar10; this harness maps "
                         "ResNet-20 teachers only")
    model.load_state_dict(dict(zip(theirs, mine.values(), strict=True)))
    model.eval()
    ours.eval()
    with torch.no_grad():
        diff = (model(probe) - ours(probe)).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"error: the mapped teacher's logits differ from ours by {diff:.2e}")
    return model


def write_official_pickles(image_dir: Path, groups: int, folder: Path) -> int:
    """Our finished batches as the official direct_dataset's four data and label pickles (lists of arrays).

    The dataset only concatenates the four files and shuffles, so the images are split into `groups` consecutive
    parts in order, whatever the number of batches (a one-batch set works too). Returns the number of batches."""
    files = sorted(image_dir.glob("batch*.pt"))
    if not files:
        raise SystemExit(f"error: {image_dir} holds no batch files (batch*.pt)")
    batches = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    images = torch.cat([b["images"].float() for b in batches]).numpy()
    labels = torch.cat([b["labels"].long() for b in batches]).numpy()
    if len(images) < groups:
        raise SystemExit(f"error: {image_dir} holds {len(images)} images, fewer than the {groups} official groups")
    for group, (x, y) in enumerate(zip(np.array_split(images, groups), np.array_split(labels, groups), strict=True)):
        with open(folder / f"Path_to_data_pickle{group + 1}.pickle", "wb") as fp:
            pickle.dump([x], fp)
        with open(folder / f"Path_to_label_pickle{group + 1}.pickle", "wb") as fp:
            pickle.dump([y], fp)
    return len(files)


def measured_trainer_class(official: types.SimpleNamespace) -> type:
    class MeasuredTrainer(official.trainer.Trainer):  # type: ignore[misc, name-defined]
        """The official Trainer; each fine-tuning step also records its loss, gradient norm and agreement."""

        steps: list[dict[str, Any]]

        def forward(self, images, teacher_outputs, labels=None):  # noqa: ANN001, ANN201 - the official signature
            output, loss = super().forward(images, teacher_outputs, labels)
            self._last = (output.detach(), teacher_outputs.detach())
            return output, loss

        def backward_S(self, loss_S):  # noqa: ANN001, ANN201, N802 - the official name
            self.optimizer_S.zero_grad()
            loss_S.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
            self.optimizer_S.step()
            output, teacher = self._last
            self.steps.append({"epoch": self.epoch, "step": len(self.steps), "loss": loss_S.item(),
                               "grad_norm": norm.item(), "lr": self.optimizer_S.param_groups[0]["lr"],
                               "agreement_with_teacher": (output.argmax(1) == teacher.argmax(1)).float().mean().item()})

    return MeasuredTrainer


def run(args: argparse.Namespace) -> dict[str, Any]:
    checkout = Path(args.official).resolve()
    official = import_official(checkout)
    settings = read_hocon(checkout / OFFICIAL_CONFIG)
    settings.update({k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.official_set)})
    opt = types.SimpleNamespace(**settings, manualSeed=args.seed + 1, tenCrop=False)
    cfg = apply_overrides(get_profile(args.profile), [*INTRAQ_BASE, f"seed={args.seed}", *args.overrides])
    device = pick_device("cpu")
    data = build_data(cfg.data)
    ours = get_teacher(cfg.teacher, data, device, RunPaths.default(args.artifacts).artifacts, progress=False)
    test_x, test_y = data.test.batch(slice(None))
    teacher = official_teacher(official.get_model, ours.model, test_x[:64])
    student = official_teacher(official.get_model, ours.model, test_x[:64])

    logger = logging.getLogger("official-stage2")
    logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)
    design = object.__new__(official.main.ExperimentDesign)  # its model methods need only .settings
    design.settings = opt
    student = design.quantize_model(student)

    torch.manual_seed(opt.manualSeed)
    generator = official.main.Generator(opt)
    with tempfile.TemporaryDirectory() as scratch:
        n_batches = write_official_pickles(Path(args.images), 4, Path(scratch))
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            dataset = official.main.direct_dataset(logger, opt.dataset)
        finally:
            os.chdir(cwd)
    loader = torch.utils.data.DataLoader(dataset, batch_size=min(opt.batchSize, len(dataset)), shuffle=True,
                                         num_workers=0, drop_last=True)
    test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(test_x, test_y), batch_size=200)
    lr_s = official.utils.LRPolicy(opt.lr_S, opt.nEpochs, opt.lrPolicy_S)
    lr_s.set_params({"step": opt.step_S, "decay_rate": opt.decayRate_S})
    lr_g = official.utils.LRPolicy(opt.lr_G, opt.nEpochs, opt.lrPolicy_G)
    lr_g.set_params({"step": opt.step_G, "decay_rate": opt.decayRate_G})
    trainer = measured_trainer_class(official)(
        model=student, model_teacher=teacher, generator=generator, lr_master_S=lr_s, lr_master_G=lr_g,
        train_loader=None, test_loader=test_loader, settings=opt, logger=logger, opt_type=opt.opt_type)
    trainer.steps = []

    tic = time.perf_counter()
    record: dict[str, Any] = {
        "what": "official IntraQ stage 2 (zysxmu/IntraQ trainer_direct.py) on our teacher and images "
                "(bench/official_stage2.py)",
        "official_repo": "zysxmu/IntraQ", "official_commit": args.official_commit or official_commit(checkout),
        "official_settings": settings, "official_overrides": list(args.official_set),
        "profile": cfg.profile, "seed": args.seed, "torch_seed": opt.manualSeed, "images": str(args.images),
        "n_batches": n_batches, "n_images": len(dataset), "teacher": ours.info,
        "teacher_id": teacher_identity(ours.info), "config": to_dict(cfg), "git_commit": git_commit(),
        "machine": machine_info(device), "epochs": [], "steps": trainer.steps,
    }
    out = Path(args.out) / f"{cfg.profile}-{Path(args.images).name}-seed{args.seed}{args.tag}.json"
    for epoch in range(args.epochs):
        trainer.epoch = epoch
        if epoch < 4:
            design.unfreeze_model(trainer.model)
        trainer.train(epoch=epoch, direct_dataload=loader)
        design.freeze_model(trainer.model)
        test_error, _, _ = trainer.test(epoch=epoch)
        losses = [s["loss"] for s in trainer.steps if s["epoch"] == epoch]
        record["epochs"].append({"epoch": epoch, "test_top1": 100.0 - test_error,
                                 "last_loss": losses[-1] if losses else None})
        record.update(seconds=time.perf_counter() - tic, finished=now_utc())
        save_json(record, out)
        print(f"epoch {epoch}: test top-1 {100.0 - test_error:.2f}%  -> {out}", flush=True)
        if any(not math.isfinite(x) for x in losses):
            print(f"non-finite loss in epoch {epoch}; stopping", flush=True)
            break
    return record


def official_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The options every official-code harness takes: data, checkout, profile, threads, where records go."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("data_root", help="the data set archive or folder of the profile")
    parser.add_argument("--official", required=True, help="a checkout of github.com/zysxmu/IntraQ")
    parser.add_argument("--official-commit", default=None,
                        help="the checkout's commit, when it is not a git work tree (e.g. a `git archive` export)")
    parser.add_argument("--profile", default="cifar10")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--out", default=out)
    return parser


def parse_official_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.overrides = [*args.overrides, f"data.root={args.data_root}"]
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = official_parser(__doc__, "results/diagnostics/official-stage2")
    parser.add_argument("--images", required=True, help="folder of our finished synthetic batches (batch*.pt)")
    parser.add_argument("--seed", type=int, default=0, help="the run id; torch is seeded with id + 1 as upstream")
    parser.add_argument("--epochs", type=int, default=6, help="epochs 0-3 calibrate; 151 is the whole run")
    parser.add_argument("--official-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an official hocon setting, e.g. lr_S=1e-5 (the record says so)")
    parser.add_argument("--tag", default="", help="suffix of the record's file name")
    run(parse_official_args(parser, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
