"""Run one table cell (or one campaign job) the same way from every runner.

`run_cell` is what a bench case calls and what a campaign job calls for each of its cells: it takes the case's
lock (a second run of the same case, e.g. on another pytest-xdist worker, waits and then reuses the result),
refuses to start a case that would not finish before the deadline, runs `intraq.pipeline.run_case`, keeps a
failure's error for `intraq status`, and writes the cell file (and figure data) the report reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import intraq
from intraq.campaign.estimate import Durations
from intraq.campaign.state import case_lock, clear_failure, record_failure
from intraq.errors import UserInputError
from intraq.interrupts import (
    stop_signals_as_interrupt,
    stop_signals_blocked,
    stop_signals_noted,
    worker_ignores_stop_signals,
)
from intraq.tables import Cell, cell_config, cells_by_name


class DeadlineReached(Exception):
    """The case would not finish before the deadline by its estimated duration; it stays pending."""


@dataclass(frozen=True)
class CaseSettings:
    """Where and how cases run: the same for every case of one bench run or campaign."""

    profile: str
    results: Path
    artifacts: Path | None = None
    extra: tuple[str, ...] = ()  # overrides applied before each cell's (data.root, --set ...)
    device: str = "auto"
    threads: int | None = 1
    compile: bool = False
    default_seconds: float | None = None  # estimate for a case when the profile has no record yet
    fast: str | None = None  # capture mode of the fast path (intraq.fast), or None for the reference path
    same_machine: bool = False  # a stored record of another machine class is run again here (intraq.reuse)


@dataclass
class CellOutcome:
    """What one cell's run gave: the record, whether it was reused, and how long this call waited or ran."""

    cell: Cell
    record: dict[str, Any]
    reused: bool
    written: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _version_key(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def check_results_version(results: Path, profile: str) -> None:
    """Refuse a results folder whose records another major/minor version of intraq-bench wrote: their layout
    and meaning may differ, and mixing them would silently reuse or overwrite them."""
    folder = Path(results) / profile
    ours = intraq.__version__
    for path in sorted(folder.glob("*-seed*.json")) if folder.exists() else []:
        try:
            version = json.loads(path.read_text()).get("intraq_bench_version")
        except (ValueError, OSError):
            continue  # the report names unreadable records
        if version is not None and _version_key(version) != _version_key(ours):
            raise UserInputError(
                f"{folder} holds records written by intraq-bench {version} (e.g. {path.name}); this is {ours}. "
                f"Use another results folder (--results DIR), or move those records away, or run them with "
                f"intraq-bench {version}. Nothing was changed.")


def run_cell(cell: Cell, seed: int, settings: CaseSettings, device: torch.device | None = None,
             deadline: float | None = None, estimate: float | None = None, progress: bool = False) -> CellOutcome:
    """Run (or reuse) the case behind `cell` at `seed` and write the cell's file for the report.

    `deadline` is a wall-clock time (time.time()); a case without a stored result does not start when its
    `estimate` (default: from the profile's records) would take it past the deadline: DeadlineReached."""
    from intraq.device import pick_device
    from intraq.pipeline import RunPaths, case_hash, run_case
    from intraq.report.collect import refresh_cell_files, save_figure_data, write_cell_record
    from intraq.results import result_path
    from intraq.reuse import required_class, reusable

    tic = time.perf_counter()
    cfg = cell_config(cell, settings.profile, seed, list(settings.extra))
    paths = RunPaths.default(settings.artifacts, settings.results)
    case = case_hash(cfg)
    stored = result_path(paths.results, cfg.profile, case, seed)
    device = device or pick_device(settings.device)
    machine = required_class(device, settings.same_machine)
    if deadline is not None and not reusable(stored, machine):
        if estimate is None:
            durations = Durations.from_records(paths.results, cfg.profile, settings.default_seconds, device.type)
            estimate, _ = durations.estimate(case, cfg.synth.method)
        left = deadline - time.time()
        if estimate > left:
            raise DeadlineReached(f"{case}-seed{seed} stays pending: its estimated {estimate:.0f} s do not fit "
                                  f"in the {max(left, 0):.0f} s left before the deadline")
    with case_lock(paths.results, cfg.profile, case, seed):
        reused = reusable(stored, machine)  # checked under the lock: a run that held it may just have written it
        try:
            record = run_case(cfg, paths, device, progress=progress, compile=settings.compile, fast=settings.fast,
                              same_machine=settings.same_machine)
            if cell.figures:
                save_figure_data(cfg, cell, paths.results, settings.artifacts, device, force=not reused,
                                 record_run=(record["started"], record.get("run_id")))
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                record_failure(paths.results, cfg.profile, case, seed, exc)
            raise
        clear_failure(paths.results, cfg.profile, case, seed)
    if not reused:  # the case ran now: the other tables' cells that show it must not keep the run it replaced
        refresh_cell_files(cfg, record, paths.results)
    written = write_cell_record(cell, cfg, record, paths.results)
    return CellOutcome(cell, record, reused, written, time.perf_counter() - tic)


STOPPED = ("stopped by a signal before it finished (SIGTERM, or the job's time-limit signal): its finished work "
           "is saved; run the campaign again to resume it")


def run_job(case: str, seed: int, cell_names: list[str], settings: CaseSettings, deadline: float | None = None,
            estimate: float | None = None, stop_file: Path | None = None) -> dict[str, Any]:
    """A campaign job's work: every cell that shows one (case, seed). Returns a summary instead of raising, so
    a job that runs several cases goes on after a failure (the error is kept for `intraq status`). A stop signal
    (`intraq.interrupts`) stops it like Ctrl-C: the case checkpoints, notes its sitting, and stays pending; so
    does an existing `stop_file` (how `run_jobs` stops the cases its worker processes have yet to begin)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cells = cells_by_name()
    outcome: dict[str, Any] = {"case": case, "seed": seed, "state": "done", "reused": True, "seconds": 0.0}
    tic = time.perf_counter()
    try:
        with stop_signals_as_interrupt():
            for name in cell_names:
                if stop_file is not None and stop_file.exists():
                    raise KeyboardInterrupt
                result = run_cell(cells[name], seed, settings, deadline=deadline, estimate=estimate)
                outcome["reused"] = outcome["reused"] and result.reused
                outcome["accuracy"] = result.record["accuracy"].get("best_epoch")
    except DeadlineReached as exc:
        outcome.update(state="pending", reason=str(exc))
    except KeyboardInterrupt:
        outcome.update(state="pending", reason=STOPPED, stopped=True)
    except Exception as exc:  # noqa: BLE001 - kept in the state folder and shown by `intraq status`
        outcome.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    outcome["seconds"] = time.perf_counter() - tic
    return outcome


def _not_started(job: tuple[str, int, list[str]]) -> dict[str, Any]:
    return {"case": job[0], "seed": job[1], "state": "pending", "reason": STOPPED, "stopped": True, "seconds": 0.0}


def run_jobs(jobs: list[tuple[str, int, list[str]]], settings: CaseSettings, deadline: float | None = None,
             parallel: int = 1, estimates: list[float | None] | None = None) -> list[dict[str, Any]]:
    """Several (case, seed, cells) jobs in one submitit job: `parallel` of them at a time on one device (small
    models leave a GPU mostly idle, so several processes share it well), each in its own process. After a stop
    signal the job ends with a summary for every case: the stopped ones and those not begun stay pending (not
    failed), so the next campaign runs them on from their checkpoints."""
    estimates = estimates or [None] * len(jobs)
    if parallel <= 1 or len(jobs) <= 1:
        outcomes: list[dict[str, Any]] = []
        with stop_signals_noted() as arrived:  # between two cases; `run_job` stops the one it runs
            for (c, s, cells), e in zip(jobs, estimates, strict=True):
                if arrived:
                    break
                outcomes.append(run_job(c, s, cells, settings, deadline, e))
                if outcomes[-1].get("stopped"):
                    break
        return outcomes + [_not_started(job) for job in jobs[len(outcomes):]]
    return _run_jobs_in_processes(jobs, settings, deadline, parallel, estimates)


def _run_jobs_in_processes(jobs: list[tuple[str, int, list[str]]], settings: CaseSettings, deadline: float | None,
                           parallel: int, estimates: list[float | None]) -> list[dict[str, Any]]:
    """`run_jobs` with `parallel` worker processes. A worker starts with the stop signals held back and then
    ignores them between two cases (Slurm signals every process of the job: one dying there would break the pool
    and lose the others' outcomes); the stop file tells it not to begin another. A signal that reached this
    process alone (submitit's local executor forwards it to the job's process only) is passed on to them."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    futures: list = []
    with tempfile.TemporaryDirectory(prefix="intraq-jobs-") as folder, stop_signals_as_interrupt():
        stop_file = Path(folder) / "stop"
        pool = None
        try:
            with stop_signals_blocked():  # the pool starts its workers as the cases are submitted
                pool = ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=worker_ignores_stop_signals)
                futures = [pool.submit(run_job, c, s, cells, settings, deadline, e, stop_file)
                           for (c, s, cells), e in zip(jobs, estimates, strict=True)]
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            stop_file.touch()
            for future in futures:
                future.cancel()
            for child in multiprocessing.active_children():
                child.terminate()  # SIGTERM: a worker in a case stops it like Ctrl-C; an idle one ignores it
            kept = [_result_or_stopped(f, job) for f, job in zip(futures, jobs, strict=False)]
            return kept + [_not_started(job) for job in jobs[len(kept):]]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _result_or_stopped(future, job: tuple[str, int, list[str]]) -> dict[str, Any]:  # noqa: ANN001 - a Future
    try:
        return future.result()
    except Exception:  # noqa: BLE001 - cancelled before it began, or its worker was lost
        return _not_started(job)
