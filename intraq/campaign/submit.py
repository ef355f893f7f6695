"""`intraq campaign`: every pending case of a profile becomes a submitit job (or K cases per job, run side by
side on one GPU), on this machine (`local`) or on a Slurm cluster (`slurm`).

Jobs call `intraq.campaign.run.run_jobs`, which writes results exactly where a single run does (atomic,
hash-named files), so result folders from several machines merge by copying. Each case runs under its lock:
a case that another campaign (or a pytest worker) is running is not submitted, and if two jobs still meet on
one, the second waits and reuses. A failed case keeps its error and is retried only with `retry_failed`.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intraq.artifacts import artifacts_root
from intraq.campaign.plan import FAILED, PENDING, RUNNING, PlannedCase, plan_cases
from intraq.campaign.run import CaseSettings, check_results_version, run_jobs
from intraq.campaign.state import record_failure
from intraq.device import pick_device
from intraq.errors import UserInputError
from intraq.results import result_path
from intraq.reuse import required_class, reusable

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class CampaignOptions:
    """How cases become submitit jobs and where those run."""

    executor: str = "local"
    seeds: int = 3
    jobs_per_gpu: int = 1  # cases per submitit job, run side by side on its GPU
    gpus_per_job: int = 0
    max_running: int | None = None  # jobs at once (local default 1; Slurm: array parallelism, default no limit)
    deadline: float | None = None  # seconds from now
    retry_failed: bool = False
    only: tuple[str, ...] = ()  # cell names (`table-key`) or case hashes; empty: every case
    partition: str | None = None
    time_limit_min: int = 60
    cpus_per_task: int | None = None
    slurm_gres: str | None = None
    logs: Path | None = None  # submitit's folder (default <artifacts>/campaign/<profile>)
    wait: bool = True
    poll_seconds: float = 2.0


@dataclass
class CampaignReport:
    submitted: list[PlannedCase] = field(default_factory=list)
    skipped: list[tuple[PlannedCase, str]] = field(default_factory=list)  # (case, why it was not submitted)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [o for o in self.outcomes if o.get("state") == "failed"]


def _select(planned: list[PlannedCase], options: CampaignOptions) -> tuple[list[PlannedCase], list[tuple]]:
    todo, skipped = [], []
    for p in planned:
        if options.only and p.case not in options.only and not any(c.name in options.only for c in p.cells):
            continue
        if p.state == PENDING or (p.state == FAILED and options.retry_failed):
            todo.append(p)
        elif p.state == RUNNING:
            skipped.append((p, f"running elsewhere ({(p.running or {}).get('host', '?')})"))
        elif p.state == FAILED:
            skipped.append((p, f"failed before ({p.error}); pass --retry-failed to run it again"))
    return todo, skipped


def _executor(options: CampaignOptions, folder: Path, settings: CaseSettings):  # noqa: ANN202 - submitit's
    import submitit

    if options.executor not in EXECUTORS:
        raise UserInputError(f"unknown executor {options.executor!r}; known: {', '.join(EXECUTORS)}")
    if options.executor == "slurm" and shutil.which("sbatch") is None:
        raise UserInputError(
            "the slurm executor needs Slurm's `sbatch` on PATH and none was found: run the campaign on a "
            "cluster's login node, or install Slurm (e.g. apt-get install slurm-wlm; `tox -e slurm` starts a "
            "one-node Slurm here), or use --executor local")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.executor)
    minutes = options.time_limit_min
    if options.deadline is not None:
        minutes = min(minutes, max(1, math.ceil(options.deadline / 60)))
    params: dict[str, Any] = {"timeout_min": minutes, "gpus_per_node": options.gpus_per_job,
                              "name": f"intraq-{settings.profile}", "tasks_per_node": 1, "nodes": 1}
    if options.cpus_per_task:
        params["cpus_per_task"] = options.cpus_per_task
    if options.executor == "slurm":
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.max_running:
            params["slurm_array_parallelism"] = options.max_running
        if options.slurm_gres:
            params["slurm_gres"] = options.slurm_gres
    executor.update_parameters(**params)
    return executor


def _jobs_class(settings: CaseSettings, device_type: str) -> str | None:
    """The machine class the jobs' records get, required of stored ones with `--same-machine` (else None)."""
    return required_class(pick_device(settings.device) if device_type == "cuda" else "cpu", settings.same_machine)


def _batches(todo: list[PlannedCase], size: int) -> list[list[PlannedCase]]:
    return [todo[i:i + max(1, size)] for i in range(0, len(todo), max(1, size))]


def _args(batch: list[PlannedCase], settings: CaseSettings, deadline: float | None, per_gpu: int) -> tuple:
    jobs = [(p.case, p.seed, [c.name for c in p.cells]) for p in batch]
    return jobs, settings, deadline, per_gpu, [p.estimate for p in batch]


def _collect(job, batch: list[PlannedCase], settings: CaseSettings,  # noqa: ANN001 - a submitit job
             machine: str | None) -> list[dict[str, Any]]:
    """A job's outcomes; a job that died (time limit, node failure) marks its unfinished cases failed (a record of
    another machine class than `machine`, with `--same-machine`, is not this job's)."""
    try:
        return list(job.result())
    except Exception as exc:  # noqa: BLE001 - submitit re-raises whatever ended the job
        out = []
        for p in batch:
            if reusable(result_path(settings.results, settings.profile, p.case, p.seed), machine):
                out.append({"case": p.case, "seed": p.seed, "state": "done", "reused": False})
                continue
            error = RuntimeError(f"submitit job {job.job_id} ended without a result: "
                                 f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
            record_failure(settings.results, settings.profile, p.case, p.seed, error)
            out.append({"case": p.case, "seed": p.seed, "state": "failed", "error": str(error)})
        return out


def launch_campaign(settings: CaseSettings, options: CampaignOptions,
                    say: Callable[[str], None] = print) -> CampaignReport:
    """Plan, submit and (with `wait`) follow the jobs; see the module docstring."""
    if options.executor not in EXECUTORS:
        raise UserInputError(f"unknown executor {options.executor!r}; known: {', '.join(EXECUTORS)}")
    if options.jobs_per_gpu < 1:
        raise UserInputError(f"--jobs-per-gpu {options.jobs_per_gpu} must be at least 1")
    if settings.same_machine and options.executor == "slurm":
        raise UserInputError("--same-machine needs to know the machine the cases run on, which a Slurm job only "
                             "learns on its node: run `intraq campaign --same-machine` (or --stack K) inside one "
                             "job instead")
    check_results_version(settings.results, settings.profile)
    on_gpu = settings.device != "cpu" and bool(options.gpus_per_job or options.slurm_gres)
    device_type = "cuda" if on_gpu else "cpu"  # what the jobs get (submitit hides GPUs from a job without one)
    todo, report = plan_selection(settings, options, device_type, say)
    machine = _jobs_class(settings, device_type)
    if not todo:
        return report
    folder = Path(options.logs or artifacts_root(settings.artifacts) / "campaign" / settings.profile)
    executor = _executor(options, folder, settings)
    deadline_at = None if options.deadline is None else time.time() + options.deadline
    batches = _batches(todo, options.jobs_per_gpu)
    if options.executor == "slurm":
        with executor.batch():
            jobs = [executor.submit(run_jobs, *_args(b, settings, deadline_at, options.jobs_per_gpu))
                    for b in batches]
        report.submitted = list(todo)
        report.job_ids = [j.job_id for j in jobs]
        say(f"submitted {len(jobs)} Slurm jobs ({len(todo)} cases): {', '.join(report.job_ids)}; logs in {folder}")
        if options.wait:
            for job, batch in zip(jobs, batches, strict=True):
                _wait(job, options.poll_seconds)
                for o in _collect(job, batch, settings, machine):
                    report.outcomes.append(o)
                    say(_line(o))
        return report
    # local: at most max_running jobs at once (submitit's local executor would start them all together)
    limit = options.max_running or 1
    queue, running = list(batches), []
    while queue or running:
        while queue and len(running) < limit:
            batch = queue.pop(0)
            if deadline_at is not None and time.time() + max(p.estimate for p in batch) > deadline_at:
                for p in batch:  # a later, shorter case may still fit
                    report.outcomes.append({"case": p.case, "seed": p.seed, "state": "pending",
                                            "reason": "would not finish before the deadline"})
                    say(f"pending: {p.name} (estimated {p.estimate:.0f} s would pass the deadline)")
                continue
            job = executor.submit(run_jobs, *_args(batch, settings, deadline_at, options.jobs_per_gpu))
            report.submitted.extend(batch)
            report.job_ids.append(str(job.job_id))
            running.append((job, batch))
        time.sleep(options.poll_seconds if running else 0)
        for job, batch in [r for r in running if r[0].done()]:
            running.remove((job, batch))
            for o in _collect(job, batch, settings, machine):
                report.outcomes.append(o)
                say(_line(o))
    return report


def plan_selection(settings: CaseSettings, options: CampaignOptions, device_type: str,
                   say: Callable[[str], None]) -> tuple[list[PlannedCase], CampaignReport]:
    """The cases to run (claim order, `only`, `retry_failed`) and a report naming those left out; a deadline
    shorter than every one of them is an error, before anything runs."""
    planned = plan_cases(settings.profile, options.seeds, settings.results, settings.extra,
                         settings.default_seconds, device_type=device_type,
                         machine=_jobs_class(settings, device_type))
    if options.only:
        known = {p.case for p in planned} | {c.name for p in planned for c in p.cells}
        unknown = [o for o in options.only if o not in known]
        if unknown:
            raise UserInputError(f"--only {', '.join(unknown)}: no such cell or case hash at profile "
                                 f"{settings.profile}; `intraq status --profile {settings.profile}` lists them")
    todo, skipped = _select(planned, options)
    report = CampaignReport(skipped=skipped)
    if options.deadline is not None and todo and min(p.estimate for p in todo) > options.deadline:
        shortest = min(todo, key=lambda p: p.estimate)
        raise UserInputError(
            f"--deadline of {options.deadline:.0f} s is shorter than every pending case (the shortest, "
            f"{shortest.name}, is estimated at {shortest.estimate:.0f} s from {shortest.estimate_source}); "
            "give a longer --deadline (or --default-case-seconds when the estimate is a default)")
    for p, why in skipped:
        say(f"not submitted: {p.name}: {why}")
    if not todo:
        say(f"nothing to run at profile {settings.profile}: every selected case is done, running or failed")
    return todo, report


def _wait(job, poll_seconds: float, ask_every: float = 60.0) -> None:  # noqa: ANN001 - a submitit job
    """Until the job ends: its result file says so at once; Slurm is asked (squeue/sacct) only once a minute, for
    jobs that end without one (time limit, node failure), which spares a cluster without accounting the noise."""
    asked = time.time()
    while not job.paths.result_pickle.exists():
        if time.time() - asked > ask_every:
            asked = time.time()
            if job.done():
                return
        time.sleep(poll_seconds)


def _line(o: dict[str, Any]) -> str:
    name = f"{o['case']}-seed{o['seed']}"
    if o["state"] == "done":
        acc = f", best epoch {o['accuracy']:.2f}%" if o.get("accuracy") is not None else ""
        how = "reused" if o.get("reused") else f"ran in {o.get('seconds', 0):.0f} s"
        return f"done: {name} ({how}{acc})"
    if o["state"] == "pending":
        return f"pending: {name} ({o.get('reason', '')})"
    return f"FAILED: {name}: {o.get('error')}"
