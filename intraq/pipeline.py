"""One benchmark case end to end: data -> teacher -> method -> record.

The method (`intraq.methods`: image set + KD fine-tuning, Qimera's joint loop, SQuant's PTQ, ...) does the
quantizing, calibrating, fine-tuning and evaluating; this module names the case, builds what every method
needs and writes the `RunRecord`. Artifacts (synthetic sets, fine-tuning checkpoints, results) are named by the
hash of the config that made them and written atomically, so a re-run reuses what exists and an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import copy
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import intraq
from intraq.artifacts import artifacts_root, load_torch, remove_artifact
from intraq.config import RunConfig, config_hash, to_dict
from intraq.data import build_data
from intraq.device import pick_device
from intraq.errors import UserInputError
from intraq.evaluate import evaluate
from intraq.fast.settings import fast_settings_for
from intraq.image_sets import (  # noqa: F401  (importable from here as before)
    calibrated_student,
    get_image_set,
    make_calibration_source,
    synthetic_set_hash,
    teacher_identity,
)
from intraq.methods import MethodContext, get_method
from intraq.methods.base import BASE_SECTIONS, Method, MethodOutcome
from intraq.methods.finetuned import FAST_CHECKPOINT, REFERENCE_CHECKPOINT
from intraq.results import (
    ACCURACY_NOTES,
    RunRecord,
    figure_file,
    git_commit,
    machine_info,
    now_utc,
    read_result,
    result_path,
    sitting,
    write_result,
)
from intraq.reuse import OTHER_MACHINES, class_folder_name, displaced_class, keep_displaced, required_class
from intraq.sitting_wall import drop_counted, forget, note_sitting, read_ledger, total_seconds
from intraq.teacher.load import get_teacher


@dataclass
class RunPaths:
    artifacts: Path
    results: Path

    @classmethod
    def default(cls, artifacts: str | Path | None = None, results: str | Path = "results") -> RunPaths:
        return cls(artifacts=artifacts_root(artifacts), results=Path(results))


def relevant_config(cfg: RunConfig) -> dict[str, Any]:
    """The sections that decide a case's numbers for its method (others are left out of its hash)."""
    full = to_dict(cfg)
    return {section: full[section] for section in (*BASE_SECTIONS, *get_method(cfg.synth.method).sections)}


def case_hash(cfg: RunConfig) -> str:
    """The name of a case: hash of its relevant config, without the seed (seeds are runs of one case)."""
    return config_hash(relevant_config(cfg))


def _stored_result_is_current(record: RunRecord, cfg: RunConfig, paths: RunPaths) -> bool:
    """A stored result is reused only if it was made with the teacher checkpoint that is there now."""
    if cfg.teacher.source != "local":
        return True
    from intraq.teacher.checkpoint import read_sidecar
    from intraq.teacher.load import local_checkpoint_path

    checkpoint = local_checkpoint_path(cfg.teacher, cfg.data.name, paths.artifacts)
    if not checkpoint.exists():
        return True  # nothing to compare with; the stored record names its own teacher
    return read_sidecar(checkpoint).get("sha256") == record.teacher.get("sha256")


def _refuse_other_data(stored: RunRecord, identity: str, path: Path) -> None:
    """A stored result of other data is never returned for this data, nor overwritten by it (even with force)."""
    if stored.data_identity != identity:
        raise UserInputError(
            f"{path} holds a result on data {stored.data_identity}, but this run's data is {identity} (same name "
            "and settings, other content): give this study its own profile name (profile = ... in a --config file) "
            "or its own --results folder, so that the two never mix"
        )


def _drop_stale_checkpoints(run_dir: Path, stored: RunRecord) -> None:
    """A stage-2 checkpoint of the stored record's own run (left when it stopped between writing its record and
    deleting it: same first sitting) must not be resumed by a forced re-run; any other one (an interrupted forced
    re-run) is kept, and the same command resumes it. Decided by content, not file times (copies reset them)."""
    first = (stored.extras.get("finetune_sittings") or [None])[0]
    if first is None:
        return
    for checkpoint in (REFERENCE_CHECKPOINT, FAST_CHECKPOINT):
        path = run_dir / checkpoint
        if not path.exists():
            continue
        try:
            blob = load_torch(path)
        except UserInputError:
            continue  # unreadable: the resume names the fix
        if isinstance(blob, dict) and (blob.get("sittings") or [None])[0] == first:
            remove_artifact(path)


@dataclass
class OpenCase:
    """A case whose stored record was not reusable, ready for its method: what `close_case` needs to write the
    record once the method's outcome is there (`intraq.stacking` runs several open cases' stage 2 together)."""

    cfg: RunConfig
    method: Method
    name: str  # the case hash
    out: Path  # where its record goes
    ctx: MethodContext
    started: str
    t0: float  # perf_counter at the start of its work
    seconds: dict[str, float]
    displaces: str | None = None  # machine class of a stored record this run replaces (`same_machine`), kept aside
    earlier: list[dict] = field(default_factory=list)  # sittings of this case that stopped before (`sitting_wall`)
    closed: bool = False  # its record is written


def run_case_record(
    cfg: RunConfig,
    paths: RunPaths | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    force: bool = False,
    compile: bool = False,
    fast: str | None = None,
    same_machine: bool = False,
) -> RunRecord:
    """Run one case (or return its stored record): data -> teacher -> method -> `RunRecord`, written to
    `<results>/<profile>/<case>-seed<N>.json` with config, seed, commit, machine and times.

    `fast` (a capture mode of `intraq.fast`, or "auto") runs the stages that have a fast path on it (same draws,
    same algorithm, tested equal to the reference up to float rounding; the record says which path ran); the
    case hash is the same either way. `same_machine`: a stored record made on another machine class is not reused
    but replaced, and kept under other-machines/ (`intraq.reuse`)."""
    opened = open_case(cfg, paths, device, progress, force, compile, fast, same_machine)
    if isinstance(opened, RunRecord):
        return opened
    with sittings_noted([opened]):
        return close_case(opened, opened.method.run(opened.ctx))


@contextmanager
def sittings_noted(cases: Sequence[OpenCase]) -> Iterator[None]:
    """If the block stops early (an interrupt, an error), note this sitting's wall seconds for every case so far
    without a record: the sitting that writes it counts them in its total (`intraq.sitting_wall`)."""
    try:
        yield
    except BaseException:
        for case in cases:
            if not case.closed:
                _note_this_sitting(case.ctx.run_dir, case.started, case.t0, case.ctx.device)
        raise


def _note_this_sitting(run_dir: Path, started: str, t0: float, device: torch.device) -> None:
    """Runs while an interrupt is on its way out: nothing here may raise in its place (`note_sitting` doesn't)."""
    seconds = round(time.perf_counter() - t0, 3)
    try:
        where = sitting(device)
    except Exception as exc:  # the machine's description is a nicety; the seconds are the point
        where = {"machine_unknown": str(exc)}
    note_sitting(run_dir, {**where, "started": started, "seconds": seconds})


def open_case(
    cfg: RunConfig,
    paths: RunPaths | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    force: bool = False,
    compile: bool = False,
    fast: str | None = None,
    same_machine: bool = False,
) -> RunRecord | OpenCase:
    """The stored record when it is reusable; else the case's data, teacher and method context, ready to run
    (a stored record of other data or another teacher is refused here, before any work; with `same_machine`, one
    of another machine class is not reusable)."""
    method = get_method(cfg.synth.method)
    paths = paths or RunPaths.default()
    device = device or pick_device()
    fast_settings = fast_settings_for(device, fast)  # a capture the device cannot run fails before any work
    if fast_settings is not None and not method.fast_path:
        print(f"fast path: method {method.name!r} has none; it runs on the reference path", file=sys.stderr)
    name = case_hash(cfg)
    out = result_path(paths.results, cfg.profile, name, cfg.seed)
    stored = read_result(out) if out.exists() else None
    tic = time.perf_counter()
    data = None
    if stored is not None and stored.data_identity is not None:
        data = build_data(cfg.data)
        _refuse_other_data(stored, data.identity, out)
    displaces = None
    if stored is not None:
        displaces = displaced_class(stored.machine, required_class(device, same_machine))
        if displaces is not None:
            print(f"{out.name}: the stored record ran on {displaces}, not on this machine class: running it again "
                  f"here (--same-machine); once this run finishes, the old record is kept under "
                  f"{OTHER_MACHINES}/{class_folder_name(displaces)}/", file=sys.stderr)
    if stored is not None and not force and displaces is None:
        if not _stored_result_is_current(stored, cfg, paths):
            made_with = stored.teacher.get("sha256")
            raise UserInputError(
                f"{out} holds a result made with teacher "
                f"{'sha256 ' + str(made_with)[:12] if made_with else '(no sha256 recorded)'}, but the "
                "teacher checkpoint there now differs: give this study its own profile name (profile = ... in a "
                "--config file) or its own --results folder so the two never mix, or, to replace it, delete that "
                "file (or pass --force to `intraq run`)"
            )
        return stored
    run_dir = paths.artifacts / "runs" / f"{name}-seed{cfg.seed}"
    if stored is not None:
        _drop_stale_checkpoints(run_dir, stored)
        drop_counted(run_dir, stored.extras.get("earlier_sittings") or [])
    earlier = read_ledger(run_dir)  # a damaged ledger stops here, before any work
    started, t0 = now_utc(), time.perf_counter()
    seconds: dict[str, float] = {}
    torch.manual_seed(cfg.seed)

    try:
        data = data or build_data(cfg.data)
        seconds["data"] = time.perf_counter() - tic
        tic = time.perf_counter()
        teacher = get_teacher(cfg.teacher, data, device, paths.artifacts, progress)
        seconds["teacher"] = time.perf_counter() - tic
    except BaseException:
        _note_this_sitting(run_dir, started, t0, device)  # e.g. stopped while its teacher trains
        raise

    def test_accuracy(model: nn.Module) -> float:
        return evaluate(model, data.test, cfg.finetune.eval_batch_size, device)

    ctx = MethodContext(
        cfg=cfg, data=data, teacher=teacher, device=device, paths=paths, run_dir=run_dir,
        test_accuracy=test_accuracy, progress=progress, compile=compile, fast=fast_settings,
    )
    return OpenCase(cfg, method, name, out, ctx, started, t0, seconds, displaces, earlier)


def close_case(case: OpenCase, outcome: MethodOutcome) -> RunRecord:
    """Write the case's record from its method's outcome, and drop its stage-2 checkpoints."""
    cfg, teacher, data = case.cfg, case.ctx.teacher, case.ctx.data
    this_sitting, earlier = time.perf_counter() - case.t0, total_seconds(case.earlier)
    seconds = {**case.seconds, **outcome.seconds, "total": this_sitting + earlier}
    extras = dict(outcome.extras)
    if case.earlier:  # resumed: the total counts the sittings that stopped before it (`intraq.sitting_wall`)
        seconds.update(this_sitting=this_sitting, earlier_sittings=earlier)
        extras["earlier_sittings"] = case.earlier
    record = RunRecord(
        case=case.name, seed=cfg.seed, profile=cfg.profile, method=case.method.name,
        accuracy={
            "after_calibration": outcome.after_calibration, "final_epoch": outcome.final_epoch,
            "best_epoch": outcome.best_epoch, "best_epoch_index": outcome.best_epoch_index,
            "diverged_at_epoch": outcome.diverged_at_epoch, "exploded_at_epoch": outcome.exploded_at_epoch,
            "teacher": teacher.info["test_top1"],
        },
        accuracy_notes=dict(ACCURACY_NOTES), teacher=teacher.info, data_identity=data.identity, config=to_dict(cfg),
        relevant_config=relevant_config(cfg), seconds=seconds, git_commit=git_commit(),
        machine=machine_info(case.ctx.device), started=case.started, finished=now_utc(), run_id=uuid.uuid4().hex,
        intraq_bench_version=intraq.__version__, command=" ".join(sys.argv), history=outcome.history,
        extras=extras,
    )
    if case.displaces is not None and case.out.exists():
        figures = figure_file(case.ctx.paths.results, cfg.profile, case.name, cfg.seed)
        keep_displaced(case.out, case.displaces, [figures])
    write_result(record, case.out)
    case.closed = True
    for checkpoint in (REFERENCE_CHECKPOINT, FAST_CHECKPOINT):
        remove_artifact(case.ctx.run_dir / checkpoint)
    forget(case.ctx.run_dir)
    return record


def run_case(
    cfg: RunConfig,
    paths: RunPaths | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    force: bool = False,
    compile: bool = False,
    fast: str | None = None,
    same_machine: bool = False,
) -> dict[str, Any]:
    """`run_case_record` as the record's JSON object (what bench cases and cell files read)."""
    return run_case_record(cfg, paths, device, progress, force, compile, fast, same_machine).to_dict()


def with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    cfg = copy.deepcopy(cfg)
    cfg.seed = seed
    return cfg
