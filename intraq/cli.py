"""`intraq` command line: train a teacher, generate an image set, run one case (quantize, fine-tune, evaluate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from intraq.config import RunConfig, apply_overrides, config_hash, to_dict
from intraq.errors import UserInputError
from intraq.profiles import PROFILES, get_profile


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="smoke", help=f"one of: {', '.join(PROFILES.names())} (default smoke)")
    parser.add_argument("--seed", type=int, default=None, help="case seed (default: the profile's, 0)")
    parser.add_argument("--data-root", default=None, help="CIFAR-10 folder/archive or ImageNet tree (data.root)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set synth.num_images=256 (repeatable)",
    )
    parser.add_argument("--artifacts", default=None, help="artifact folder (default $INTRAQ_ARTIFACTS or ./artifacts)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the image-generation loss (faster for long runs; ~30 s to compile)")


def build_config(args: argparse.Namespace, method: str | None = None) -> RunConfig:
    cfg = get_profile(args.profile)
    overrides = list(args.overrides)
    if method is not None:
        overrides.insert(0, f"synth.method={method}")
    if args.seed is not None:
        overrides.insert(0, f"seed={args.seed}")
    if args.data_root is not None:
        overrides.insert(0, f"data.root={args.data_root}")
    return apply_overrides(cfg, overrides)


def _setup(args: argparse.Namespace) -> torch.device:
    from intraq.device import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def cmd_profiles(args: argparse.Namespace) -> int:
    for name in PROFILES.names():
        doc = (PROFILES.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:12s} {doc}")
    return 0


def cmd_teacher_train(args: argparse.Namespace) -> int:
    from intraq.artifacts import artifacts_root
    from intraq.data import build_data
    from intraq.teacher.load import local_checkpoint_path
    from intraq.teacher.train import train_teacher

    cfg = build_config(args)
    device = _setup(args)
    data = build_data(cfg.data)
    out = Path(args.out) if args.out else local_checkpoint_path(cfg.teacher, data.name, artifacts_root(args.artifacts))
    if out.exists() and not args.force:
        raise UserInputError(f"{out} exists; pass --force to retrain, or delete it")
    _, sidecar = train_teacher(cfg.teacher, data, out, cfg.teacher.train_seed, device, progress=not args.quiet)
    print(f"teacher {cfg.teacher.name} on {data.name}: test top-1 {sidecar['test_top1']:.2f}%  -> {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from intraq.data import build_data
    from intraq.pipeline import RunPaths, _register_methods, get_image_set
    from intraq.teacher.load import get_teacher

    cfg = build_config(args, args.method)
    device = _setup(args)
    _register_methods()
    paths = RunPaths.default(args.artifacts)
    data = build_data(cfg.data)
    teacher = get_teacher(cfg.teacher, data, device, paths.artifacts, progress=not args.quiet)
    image_set, seconds = get_image_set(
        cfg, teacher, data, device, paths, progress=not args.quiet, compile=args.compile
    )
    with torch.no_grad():
        predicted = torch.cat([teacher.model(image_set.images[i : i + 256].to(device)).argmax(1).cpu()
                               for i in range(0, len(image_set), 256)])
    labels = image_set.labels if image_set.labels.dim() == 1 else image_set.labels.argmax(1)
    agree = 100.0 * (predicted == labels).float().mean().item()
    print(f"{cfg.synth.method}: {len(image_set)} images {tuple(image_set.images.shape[1:])} in {seconds:.1f}s; "
          f"teacher agrees with the labels on {agree:.1f}%")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from intraq.pipeline import RunPaths, case_hash, run_case

    cfg = build_config(args, args.method)
    device = _setup(args)
    if args.print_config:
        import json

        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    paths = RunPaths.default(args.artifacts, args.results)
    record = run_case(cfg, paths, device, progress=not args.quiet, force=args.force, compile=args.compile)
    acc = record["accuracy"]
    bits = f"W{cfg.quant.weight_bits}A{cfg.quant.act_bits}"
    print(f"case {case_hash(cfg)} seed {cfg.seed} ({cfg.profile}, {cfg.synth.method}, {bits})")
    print(f"  {'teacher (full precision)':<32s}{acc['teacher']:6.2f}%")
    print(f"  {bits} {'after calibration only':<27s}{acc['after_calibration']:6.2f}%")
    print(f"  {bits} {'final epoch':<27s}{acc['final_epoch']:6.2f}%")
    best_at = acc.get("best_epoch_index")
    label = "best epoch" if best_at is None else f"best epoch (#{best_at})"
    print(f"  {bits} {label:<27s}{acc['best_epoch']:6.2f}%")
    print(f"  wall time {record['seconds']['total']:.1f}s; result: "
          f"{Path(args.results) / cfg.profile / (case_hash(cfg) + f'-seed{cfg.seed}.json')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from intraq.report import render_report
    from intraq.report.index import profiles_with_results, readme_section, render_index, rewrite_readme

    if args.readme:  # a bad README path fails before anything is written
        if not Path(args.readme).is_file():
            raise UserInputError(f"no README at {args.readme}; pass --readme PATH")
        readme_section(Path(args.readme).read_text())
    if args.all:
        profiles = profiles_with_results(args.results)
    elif args.profile:
        profiles = [args.profile]
    else:  # `--readme` alone rewrites README and the index only
        profiles = [] if args.readme else ["smoke"]
    for profile in profiles:
        files = render_report(profile, args.results, args.out)
        print(f"report for profile {profile}: {files.markdown} and {files.html} ({len(files.figures)} figures)")
    index = render_index(args.results, args.out)
    print(f"index over every profile in {args.results}: {index.markdown} and {index.html}")
    if args.readme:
        changed = rewrite_readme(args.readme, args.results)
        print(f"{args.readme}: results block {'rewritten' if changed else 'already up to date'}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intraq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profiles", help="list the profiles")
    p.set_defaults(func=cmd_profiles)

    teacher = sub.add_parser("teacher", help="teacher commands").add_subparsers(dest="teacher_command", required=True)
    p = teacher.add_parser("train", help="train the profile's teacher with the project's recipe")
    _common(p)
    p.add_argument("--out", default=None, help="checkpoint path (default: the profile's)")
    p.add_argument("--force", action="store_true", help="retrain even if the checkpoint exists")
    p.set_defaults(func=cmd_teacher_train)

    p = sub.add_parser("generate", help="generate (or reuse) an image set")
    _common(p)
    p.add_argument("--method", default="intraq", help="intraq | adi | gdfq | deepinversion | real")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="quantize, fine-tune and evaluate one case")
    _common(p)
    p.add_argument("--method", default="intraq", help="intraq | adi | gdfq | deepinversion | real | qimera | squant")
    p.add_argument("--results", default="results", help="results folder (default ./results)")
    p.add_argument("--force", action="store_true", help="recompute even if the result exists")
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render the tables report from results/ (markdown + self-contained HTML)")
    p.add_argument("--profile", default=None, help="whose results to render (default smoke)")
    p.add_argument("--all", action="store_true", help="render every profile that has results")
    p.add_argument("--results", default="results", help="results folder (default ./results)")
    p.add_argument("--out", default="reports",
                   help="output folder; writes OUT/<profile>/report.{md,html} and OUT/index.{md,html}")
    p.add_argument("--readme", nargs="?", const="README.md", default=None, metavar="PATH",
                   help="also rewrite the generated results block of README.md (or PATH) from results/")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserInputError as exc:
        print(f"intraq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("intraq: interrupted; finished work is saved, run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "make_parser", "build_config", "config_hash"]
