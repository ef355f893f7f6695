"""`intraq` command line: train a teacher, generate an image set, run one case (quantize, fine-tune, evaluate).

torch is imported only once the config is built and checked, so bad input fails in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from intraq.config import RunConfig, apply_overrides, config_hash, to_dict
from intraq.errors import UserInputError
from intraq.interrupts import stop_signals_as_interrupt
from intraq.methods import METHODS
from intraq.profiles import PROFILES, evidence_of, get_profile

if TYPE_CHECKING:
    import torch

EMBEDDED_DATA = ("digits",)  # data sets shipped inside the package: they take no data.root


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, help=f"one of: {', '.join(PROFILES.names())} (default smoke)")
    parser.add_argument("--config", default=None, metavar="FILE.toml",
                        help="a study file instead of a profile (`intraq profiles --show smoke` prints one)")
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
                        help="torch.compile the long loop's hot part: the image-generation loss, or teacher "
                             "training's forward (faster for long runs; ~30 s to compile)")


FAST_HELP = ("run the stages that have a fast path on it (intraq.fast: the same draws and algorithm, no host sync "
             "per step; IntraQ's image generation and KD fine-tuning); CAPTURE: auto (CUDA graphs on a GPU, eager on "
             "the CPU), none, compile or cudagraph. Same case, same result up to float rounding; the record says "
             "which path ran")


def _fast_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fast", nargs="?", const="auto", default=None, metavar="CAPTURE", help=FAST_HELP)


SAME_MACHINE_HELP = ("reuse a stored record only if it ran on this machine class (GPU or CPU type, torch version); "
                     "one of another class is run again here and kept under <results>/<profile>/other-machines/ "
                     "(claims compare cells only on one class)")


def _same_machine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--same-machine", action="store_true", help=SAME_MACHINE_HELP)


def build_config(args: argparse.Namespace, method: str | None = None) -> RunConfig:
    if args.config and args.profile:
        raise UserInputError("give --profile or --config, not both (a study file names its own profile)")
    if args.config:
        from intraq.config_file import load_config_file

        cfg = load_config_file(args.config)
    else:
        cfg = get_profile(args.profile or "smoke")
    overrides = list(args.overrides)
    if method is not None:
        overrides.insert(0, f"synth.method={method}")
    if args.seed is not None:
        overrides.insert(0, f"seed={args.seed}")
    if args.data_root is not None:
        overrides.insert(0, f"data.root={args.data_root}")
    cfg = apply_overrides(cfg, overrides)
    if cfg.data.root and cfg.data.name in EMBEDDED_DATA:
        raise UserInputError(
            f"profile {cfg.profile} uses the embedded {cfg.data.name} data, which reads no data root, so "
            f"--data-root/data.root {cfg.data.root} would be ignored: drop it, or pick a profile that reads it "
            "(--profile cifar10-cpu, cifar10 or imagenet)"
        )
    return cfg


def _setup(args: argparse.Namespace) -> torch.device:
    import torch

    from intraq.device import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def cmd_profiles(args: argparse.Namespace) -> int:
    if args.show:
        from intraq.config_file import to_toml

        print(to_toml(get_profile(args.show)), end="")
        return 0
    width = max(len(name) for name in PROFILES.names())
    for name in PROFILES.names():
        doc = (PROFILES.get(name).__doc__ or "").strip().splitlines()[0]
        evidence = evidence_of(name)
        tier = f" [evidence: {evidence.tier}]" if evidence is not None else ""
        print(f"{name:{width}s} {doc}{tier}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for name in METHODS.names():
        print(f"{name:14s} {METHODS.get(name).summary}")
    return 0


def _image_set_methods() -> list[str]:
    return [name for name in METHODS.names() if METHODS.get(name).makes_images]


def cmd_teacher_train(args: argparse.Namespace) -> int:
    from intraq.artifacts import artifacts_root
    from intraq.data import build_data
    from intraq.teacher.load import recipe_checkpoint_path
    from intraq.teacher.train import check_train_target, train_teacher

    cfg = build_config(args)
    artifacts = artifacts_root(args.artifacts)
    # Under the artifacts unless --out: a committed teacher (teachers/) is replaced only by --out PATH --force.
    out = Path(args.out) if args.out else recipe_checkpoint_path(cfg.teacher, cfg.data.name, artifacts)
    check_train_target(out, explicit=args.out is not None, force=args.force)
    device = _setup(args)
    data = build_data(cfg.data)
    _, sidecar = train_teacher(cfg.teacher, data, out, cfg.teacher.train_seed, device, progress=not args.quiet,
                               eval_every=args.eval_every, channels_last=args.channels_last, compile=args.compile)
    print(f"teacher {cfg.teacher.name} on {data.name}: test top-1 {sidecar['test_top1']:.2f}%, sha256 "
          f"{sidecar['sha256'][:12]}… ({sidecar['torch_threads']} torch threads)  -> {out}")
    print("  the weights depend on the CPU and the thread count (float summation order), so they may differ from "
          "a teacher trained elsewhere, and its cases are new cases; "
          f"use it with --set teacher.checkpoint={out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = build_config(args, args.method)
    if not METHODS.get(cfg.synth.method).makes_images:  # qimera, squant: say so before any work
        raise UserInputError(
            f"method {cfg.synth.method!r} makes no image set; methods that do: {', '.join(_image_set_methods())}"
        )
    device = _setup(args)
    import torch

    from intraq.data import build_data
    from intraq.fast.settings import fast_settings_for
    from intraq.image_sets import get_image_set
    from intraq.pipeline import RunPaths
    from intraq.teacher.load import get_teacher

    fast = fast_settings_for(device, args.fast)
    paths = RunPaths.default(args.artifacts)
    data = build_data(cfg.data)
    teacher = get_teacher(cfg.teacher, data, device, paths.artifacts, progress=not args.quiet)
    image_set, seconds = get_image_set(
        cfg, teacher, data, device, paths, progress=not args.quiet, compile=args.compile, fast=fast
    )
    with torch.no_grad():
        predicted = torch.cat([teacher.model(image_set.images[i : i + 256].to(device)).argmax(1).cpu()
                               for i in range(0, len(image_set), 256)])
    labels = image_set.labels if image_set.labels.dim() == 1 else image_set.labels.argmax(1)
    agree = 100.0 * (predicted == labels).float().mean().item()
    print(f"{cfg.synth.method}: {len(image_set)} images {tuple(image_set.images.shape[1:])} in {seconds:.1f}s; "
          f"teacher agrees with the labels on {agree:.1f}%")
    return 0


def _reuse_line(path: Path, record: dict) -> str:
    machine = record.get("machine", {})
    where = machine.get("hostname", "an unknown machine")
    if machine.get("device"):
        where += f" ({machine['device']}, {machine.get('torch_threads', '?')} threads)"
    when = record.get("finished") or record.get("started") or "an unknown date"
    return (f"reused the stored result {path} (run on {where} at {when}, commit {str(record.get('git_commit'))[:12]}); "
            "nothing was computed now; --force re-runs it")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = build_config(args, args.method)
    device = _setup(args)
    from intraq.pipeline import RunPaths, case_hash, run_case_record
    from intraq.results import default_results_dir, read_result, result_path

    if args.print_config:
        import json

        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from intraq.campaign.state import case_lock, running_info

    results = Path(args.results) if args.results else default_results_dir(args.publish)
    paths = RunPaths.default(args.artifacts, results)
    stored_file = result_path(results, cfg.profile, case_hash(cfg), cfg.seed)
    holder = running_info(results, cfg.profile, case_hash(cfg), cfg.seed)
    if holder:  # one run per case at a time: wait for it, then reuse what it stored
        print(f"case {case_hash(cfg)} seed {cfg.seed} is running in another process ({holder.get('host')}, pid "
              f"{holder.get('pid')}, since {holder.get('started')}); waiting for it", flush=True)
    with case_lock(results, cfg.profile, case_hash(cfg), cfg.seed):
        stored = read_result(stored_file) if stored_file.exists() and not args.force else None
        record = run_case_record(cfg, paths, device, progress=not args.quiet, force=args.force, compile=args.compile,
                                 fast=args.fast, same_machine=args.same_machine)
    reused = stored is not None and (stored.run_id, stored.started, stored.finished, stored.seconds) == (
        record.run_id, record.started, record.finished, record.seconds)
    if reused:
        print(_reuse_line(stored_file, record.to_dict()))
    else:  # ran now (its record is written): cells that showed the run it replaced must show this one
        from intraq.report.collect import refresh_cell_files

        for path in refresh_cell_files(cfg, record.to_dict(), results):
            print(f"cell file rewritten for this run: {path}")
    acc = record.accuracy
    bits = f"W{cfg.quant.weight_bits}A{cfg.quant.act_bits}"
    print(f"case {case_hash(cfg)} seed {cfg.seed} ({cfg.profile}, {cfg.synth.method}, {bits})")
    print(f"  {'teacher (full precision)':<32s}{acc['teacher']:6.2f}%")
    print(f"  {bits} {'after calibration only':<27s}{acc['after_calibration']:6.2f}%")
    print(f"  {bits} {'final epoch':<27s}{acc['final_epoch']:6.2f}%")
    best_at = acc.get("best_epoch_index")
    label = "best epoch" if best_at is None else f"best epoch (#{best_at})"
    print(f"  {bits} {label:<27s}{acc['best_epoch']:6.2f}%")
    wall = "stored run's wall time" if reused else "wall time"
    print(f"  {wall} {record.seconds['total']:.1f}s; result: {stored_file}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from intraq.config_file import resolve_profile
    from intraq.report import render_report
    from intraq.report.index import profiles_with_results, readme_section, render_index, rewrite_readme
    from intraq.results import default_reports_dir, default_results_dir

    if args.profile:
        args.profile = resolve_profile(args.profile)
    publish = args.publish or bool(args.readme)  # README's block shows the published results only
    results = Path(args.results) if args.results else default_results_dir(publish)
    out = Path(args.out) if args.out else default_reports_dir(publish)
    if args.readme:  # a bad README path fails before anything is written
        if not Path(args.readme).is_file():
            raise UserInputError(f"no README at {args.readme}; pass --readme PATH")
        readme_section(Path(args.readme).read_text())
    if args.all:
        profiles = profiles_with_results(results)
    elif args.profile:
        profiles = [args.profile]
    else:  # `--readme` alone rewrites README and the index only
        profiles = [] if args.readme else ["smoke"]
    for profile in profiles:
        print(f"rendering results from {results / profile}")
        files = render_report(profile, results, out)
        print(f"report for profile {profile}: {files.markdown} and {files.html} ({len(files.figures)} figures)")
    index = render_index(results, out)
    print(f"index over every profile in {results}: {index.markdown} and {index.html}")
    if args.readme:
        changed = rewrite_readme(args.readme, results)
        print(f"{args.readme}: results block {'rewritten' if changed else 'already up to date'}")
    return 0


def _results_options(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--results", default=None,
                        help=f"results folder to {verb} (default $INTRAQ_RESULTS, else results/local, or the "
                        "published results/ with --publish)")
    publish = {"write": "write the committed results/<profile>/ instead of results/local/",
               "read": "render the committed results/<profile>/ into the committed reports/ instead of the local "
                       "folders"}[verb]
    parser.add_argument("--publish", action="store_true", help=f"{publish} (maintainers)")


def _version() -> str:
    import torch

    import intraq
    from intraq.results import git_commit

    return f"intraq-bench {intraq.__version__} (commit {git_commit()}, torch {torch.__version__})"


class _VersionAction(argparse.Action):
    """`--version`: one unwrapped line, and the git lookup only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version, commit and torch version, and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


def _case_settings(args: argparse.Namespace):  # noqa: ANN202 - intraq.campaign.CaseSettings, imported late
    from intraq.campaign import CaseSettings
    from intraq.results import default_results_dir

    extra = ([f"data.root={args.data_root}"] if args.data_root else []) + list(args.overrides)
    results = Path(args.results) if args.results else default_results_dir(args.publish)
    return CaseSettings(args.profile, results, Path(args.artifacts) if args.artifacts else None,
                        tuple(extra), getattr(args, "device", "auto"), getattr(args, "threads", 1),
                        getattr(args, "compile", False), args.default_case_seconds, getattr(args, "fast", None),
                        getattr(args, "same_machine", False))


def cmd_curve(args: argparse.Namespace) -> int:
    from intraq.config_file import resolve_profile
    from intraq.report.curves import load_curves, record_curve, stage2_cut

    if not args.within >= 0:  # also NaN
        raise UserInputError(f"--within {args.within}: give a margin in points, >= 0 (e.g. 0.3)")
    if args.record:  # runs with their own overrides, which are no table cell
        missing = [r for r in args.record if not Path(r).is_file()]
        if missing:
            raise UserInputError(f"--record {', '.join(missing)}: no such file")
        curves = [c for c in (record_curve(Path(r)) for r in args.record) if c is not None]
        if not curves:
            raise UserInputError(f"--record {', '.join(args.record)}: no per-epoch history in these records")
        if len({c.profile for c in curves}) > 1:
            raise UserInputError("--record: the records are of several profiles; one cut is for one setting")
        profile, label = curves[0].profile, "the records"
    else:
        profile = resolve_profile(args.profile)
        table, _, cell = args.cell.partition("/")
        if not table or not cell:
            raise UserInputError(f"--cell {args.cell!r}: give TABLE/CELL, e.g. main_cifar10/w4a4")
        results = Path(args.results)
        curves = load_curves(results, profile, (table, cell))
        if not curves:
            raise UserInputError(f"no record with a per-epoch history for cell {args.cell} at profile {profile} in "
                                 f"{results}: run it (pytest bench -k \"{table} and {cell}\" --profile {profile}), "
                                 "or name another --cell, --results or a --record")
        label = args.cell
    cuts = [stage2_cut(c, args.within) for c in curves]
    diverged = [c for c in curves if c.diverged_at is not None]
    # A run that diverged before any fine-tuning epoch beat calibration says nothing about fine-tuning's length
    early = [c for c, cut in zip(curves, cuts, strict=True)
             if c.diverged_at is not None and cut.best_epoch < c.calibration_epochs]
    if early:
        print(f"{label} at {profile}: no cut: " + "; ".join(
            f"seed {c.seed} diverged at epoch {c.diverged_at} (non-finite KD loss; the run stopped there) with "
            "its best in calibration" for c in early) + ". A cut needs runs whose fine-tuning trained.",
              file=sys.stderr)
        return 1
    if diverged:  # its best came from fine-tuning, before it diverged: the official protocol reports that best
        print("caution: " + "; ".join(f"seed {c.seed} diverged at epoch {c.diverged_at}" for c in diverged)
              + ": its best is that of the epochs before; a run that trained through might peak later, so the cut "
              "keeps what the official protocol (best test epoch, T12) reports for these runs, not a full "
              "schedule's plateau", file=sys.stderr)
    print(f"{label} at {profile}: where the test top-1 comes within {args.within:g} points of each run's best "
          "(epochs from 0, calibration first; keeping epochs 0..e is finetune.epochs = e + 1)")
    for c in cuts:
        stays = f"stays there from epoch {c.stays}" if c.stays is not None else "ends below it"
        print(f"  seed {c.seed}: best {c.best:.2f} at epoch {c.best_epoch} of 0..{c.last_epoch}; reaches best − "
              f"{c.within:g} at epoch {c.reaches}; {stays}")
    # Stage 2 needs at least one epoch after calibration (finetune.epochs > calib_epochs).
    least = max(c.calibration_epochs for c in curves) + 1

    def epochs(last: int) -> str:
        return f"finetune.epochs = {max(last + 1, least)}" + (" (calibration alone reaches it)" if last + 1 < least
                                                               else "")

    seeds = f"over {len(cuts)} seed{'s' if len(cuts) != 1 else ''}, the latest"
    print(f"cut for the best-epoch metric: {epochs(max(c.reaches for c in cuts))} ({seeds})")
    if all(c.stays is not None for c in cuts):
        print(f"cut for the final-epoch metric too: {epochs(max(c.stays for c in cuts))} ({seeds})")
    else:
        print("no cut keeps the final-epoch metric: a curve ends below the margin (its final epoch is not its "
              "plateau); compare best epochs")
    return 0


def cmd_campaign(args: argparse.Namespace) -> int:
    import torch

    from intraq.campaign.estimate import parse_duration
    from intraq.campaign.submit import CampaignOptions, launch_campaign
    from intraq.config_file import resolve_profile

    args.profile = resolve_profile(args.profile)
    get_profile(args.profile)  # an unknown profile fails before anything else
    if args.fast is not None:  # a bad capture fails here, not once per submitted job
        from intraq.fast.settings import check_fast_mode, fast_settings_for

        if args.executor == "local":
            from intraq.device import pick_device

            fast_settings_for(pick_device(args.device), args.fast)
        else:  # the job's device is not known here
            check_fast_mode(args.fast)
    options = CampaignOptions(
        executor=args.executor, seeds=args.seeds, jobs_per_gpu=args.jobs_per_gpu,
        gpus_per_job=args.gpus_per_job if args.gpus_per_job is not None
        else 1 if args.executor == "slurm" else int(torch.cuda.is_available()),
        max_running=args.max_running, deadline=parse_duration(args.deadline), retry_failed=args.retry_failed,
        only=tuple(args.only), partition=args.partition, time_limit_min=args.time_limit,
        cpus_per_task=args.cpus_per_task, slurm_gres=args.gres, logs=Path(args.logs) if args.logs else None,
        wait=not args.no_wait,
    )
    if args.stack > 1:
        if args.executor != "local":
            raise UserInputError("--stack runs the cases in this process: use it with --executor local (on a "
                                 "Slurm cluster, run `intraq campaign --stack K` inside one GPU job)")
        from intraq.campaign.stacked import run_stacked_campaign

        settings = _case_settings(args)
        if settings.fast is None:  # stacking is the fast path's
            settings = dataclasses.replace(settings, fast="auto")
        report = run_stacked_campaign(settings, options, args.stack, progress=not getattr(args, "quiet", False))
    elif args.stack < 1:
        raise UserInputError(f"--stack {args.stack} must be at least 1")
    else:
        report = launch_campaign(_case_settings(args), options)
    done = sum(1 for o in report.outcomes if o["state"] == "done")
    pending = sum(1 for o in report.outcomes if o["state"] == "pending")
    print(f"campaign {args.profile}: {len(report.submitted)} cases submitted; {done} done, {pending} pending, "
          f"{len(report.failed)} failed; `intraq status --profile {args.profile}` shows every case")
    if any(o.get("stopped") for o in report.outcomes):
        print("intraq: a job was stopped by a signal; its finished work is saved, run the same command again to "
              "resume", file=sys.stderr)
        return 130
    return 1 if report.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from intraq.campaign import check_results_version
    from intraq.campaign.status import status_text
    from intraq.config_file import resolve_profile

    args.profile = resolve_profile(args.profile)
    get_profile(args.profile)
    settings = _case_settings(args)
    check_results_version(settings.results, settings.profile)
    from intraq.device import pick_device
    from intraq.reuse import required_class

    machine = required_class(pick_device(args.device), args.same_machine)
    print(status_text(args.profile, args.seeds, settings.results, settings.extra, args.default_case_seconds, machine))
    return 0


def _cases_options(p: argparse.ArgumentParser) -> None:
    """What selects the cases of a profile, for `campaign` and `status` (as `pytest bench` takes them)."""
    p.add_argument("--profile", default="smoke",
                   help=f"one of: {', '.join(PROFILES.names())}, or a study file FILE.toml (default smoke)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell (default 3)")
    _results_options(p, "write")
    p.add_argument("--artifacts", default=None, help="artifact folder (default $INTRAQ_ARTIFACTS or ./artifacts)")
    p.add_argument("--data-root", default=None, help="CIFAR-10 folder/archive or ImageNet tree (data.root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field for every case (changes the case hashes)")
    p.add_argument("--default-case-seconds", type=float, default=None,
                   help="estimated duration of a case when the profile has no record yet (default: per profile)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intraq", description=__doc__)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profiles", help="list the profiles, or print one as a study file")
    p.add_argument("--show", default=None, metavar="NAME", help="print profile NAME as a TOML study file")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("methods", help="list the methods (--method)")
    p.set_defaults(func=cmd_methods)

    teacher = sub.add_parser("teacher", help="teacher commands").add_subparsers(dest="teacher_command", required=True)
    p = teacher.add_parser("train", help="train the profile's teacher with the project's recipe")
    _common(p)
    p.add_argument("--out", default=None,
                   help="checkpoint path (default: <artifacts>/teachers/<name>-<data>-<recipe hash>.pt)")
    p.add_argument("--force", action="store_true",
                   help="retrain even if the checkpoint exists (a committed one only together with --out naming it)")
    p.add_argument("--eval-every", type=int, default=10, metavar="N",
                   help="test top-1 every N epochs, shown and kept in the sidecar's history (0: only at the end; "
                        "the weights do not depend on it)")
    p.add_argument("--channels-last", action="store_true",
                   help="train in the channels-last memory format (faster convolutions on CPUs and GPUs; the same "
                        "steps up to float rounding; --compile, for teacher training, compiles its forward)")
    p.set_defaults(func=cmd_teacher_train)

    p = sub.add_parser("generate", help="generate (or reuse) an image set")
    _common(p)
    p.add_argument("--method", default="intraq", help=f"one of: {', '.join(_image_set_methods())} (default intraq)")
    _fast_option(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="quantize, fine-tune and evaluate one case")
    _common(p)
    p.add_argument("--method", default="intraq",
                   help=f"one of: {', '.join(METHODS.names())} (default intraq; `intraq methods` describes them)")
    _results_options(p, "write")
    _fast_option(p)
    _same_machine_option(p)
    p.add_argument("--force", action="store_true", help="recompute even if the result exists")
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render the tables report from results/ (markdown + self-contained HTML)")
    p.add_argument("--profile", default=None, help="whose results to render, a profile or a study file FILE.toml "
                   "(default smoke)")
    p.add_argument("--all", action="store_true", help="render every profile that has results")
    _results_options(p, "read")
    p.add_argument("--out", default=None,
                   help="output folder; writes OUT/<profile>/report.{md,html} and OUT/index.{md,html} (default "
                   "reports/local, or reports with --publish)")
    p.add_argument("--readme", nargs="?", const="README.md", default=None, metavar="PATH",
                   help="also rewrite the generated results block of README.md (or PATH) from the published results "
                   "(implies --publish)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("campaign", help="run every pending case of a profile as submitit jobs (local or Slurm)")
    _cases_options(p)
    p.add_argument("--executor", default="local", choices=("local", "slurm"),
                   help="local: jobs on this machine; slurm: sbatch jobs (needs Slurm)")
    p.add_argument("--jobs-per-gpu", type=int, default=1, help="cases per job, run side by side on its GPU")
    p.add_argument("--stack", type=int, default=1, metavar="K",
                   help="run here, in this process, K cases that share a stage 2 at a time, their KD fine-tuning "
                   "stacked (vmap) on the fast path (one GPU filled from one process; no submitit)")
    p.add_argument("--gpus-per-job", type=int, default=None,
                   help="GPUs per job (default: slurm 1; local 1 if CUDA is here, else 0)")
    p.add_argument("--max-running", type=int, default=None,
                   help="jobs at once (local default 1; slurm: array parallelism, default no limit)")
    p.add_argument("--deadline", default=None, metavar="DURATION",
                   help="e.g. 12m, 2h: start no case whose estimated duration ends after it; those stay pending")
    p.add_argument("--retry-failed", action="store_true", help="run failed cases again (kept otherwise)")
    p.add_argument("--only", action="append", default=[], metavar="CELL_OR_CASE",
                   help="only this cell (table-key, e.g. comparison-squant) or case hash (repeatable)")
    p.add_argument("--partition", default=None, help="Slurm partition")
    p.add_argument("--time-limit", type=int, default=60, help="job time limit in minutes (default 60)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per job")
    p.add_argument("--gres", default=None, help="Slurm --gres, e.g. gpu:a100:1 (instead of --gpus-per-job)")
    p.add_argument("--logs", default=None, help="submitit folder (default <artifacts>/campaign/<profile>)")
    p.add_argument("--no-wait", action="store_true", help="slurm: return after submitting")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per case (default 1)")
    _fast_option(p)
    _same_machine_option(p)
    p.set_defaults(func=cmd_campaign)

    p = sub.add_parser("curve", help="where a cell's learning curve comes within a margin of its best (a stage-2 cut)")
    p.add_argument("--profile", default="cifar10", help="profile whose records hold the curve (default cifar10)")
    p.add_argument("--cell", default="main_cifar10/w4a4", help="TABLE/CELL (default main_cifar10/w4a4)")
    p.add_argument("--within", type=float, default=0.3, help="points below the best (default 0.3)")
    p.add_argument("--results", default="results", help="results folder (default: the committed results/)")
    p.add_argument("--record", action="append", default=[], metavar="FILE",
                   help="read the curve from this run record instead of a cell (repeatable: one per seed), e.g. a "
                   "run with its own --set overrides")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("status", help="claims x cells x seeds of a profile: done, running, pending, failed")
    _cases_options(p)
    p.add_argument("--device", default="auto", help="with --same-machine: the device whose class counts")
    _same_machine_option(p)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # SIGTERM (kill, scancel, Slurm at its time limit) stops a run like Ctrl-C: checkpoint, then exit 130.
    try:
        with stop_signals_as_interrupt():
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
