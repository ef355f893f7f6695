"""The cases of a profile in the order they should run, each with its state and estimated duration.

Enumeration is `intraq.tables.jobs` (one (case, seed) per distinct config, with every cell that shows it); this
module adds what runners need: claim order (cells that an undecided claim needs first, then seed 0 of every
case before seed 1), whether each case is done, running, pending or failed, and how long it should take.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intraq.campaign.estimate import Durations
from intraq.campaign.state import read_failure, running_info
from intraq.results import result_path
from intraq.reuse import read_stored, stored_is_reusable
from intraq.tables import Cell, all_tables, cell_config, cells_by_name, jobs

DONE, RUNNING, PENDING, FAILED = "done", "running", "pending", "failed"


@dataclass(frozen=True)
class PlannedCase:
    """One (case, seed): the cells that show it, its state now and its estimated compute seconds."""

    case: str
    seed: int
    cells: tuple[Cell, ...]
    method: str
    state: str
    needed: bool  # by a claim that is not decided yet
    estimate: float
    estimate_source: str
    seconds: float | None = None  # compute seconds of the stored record (done cases)
    accuracy: float | None = None  # its best-epoch top-1
    error: str | None = None  # failed cases
    running: dict[str, Any] | None = None  # who runs it (running cases)

    @property
    def name(self) -> str:
        return f"{self.case}-seed{self.seed}"


def claim_verdicts(results: Path, profile: str) -> dict[str, str]:
    """Claim key -> verdict on the stored results (best-epoch top-1, the paper's metric); {} without results."""
    from intraq.claims import evaluate_claim
    from intraq.errors import UserInputError
    from intraq.report.load import load_results

    try:
        loaded = load_results(results, profile)
    except UserInputError:
        return {}
    return {claim.key: evaluate_claim(claim, loaded.values(table.key, "best_epoch")).verdict
            for table in all_tables() for claim in table.claims}


def needed_cells(verdicts: dict[str, str]) -> set[str]:
    """Names (`table-key`) of the cells that some claim not yet holding or failing compares."""
    out: set[str] = set()
    for table in all_tables():
        for claim in table.claims:
            if verdicts.get(claim.key) in ("holds", "fails"):
                continue
            out.update(f"{table.key}-{key}" for pair in claim.pairs for key in pair)
    return out


def plan_cases(profile: str, seeds: int, results: Path, extra: tuple[str, ...] = (),
               default_seconds: float | None = None, needed: set[str] | None = None,
               device_type: str | None = None, machine: str | None = None) -> list[PlannedCase]:
    """Every (case, seed) of the profile's tables in run order. `needed` (cell names) overrides the claim
    verdicts read from `results` (pytest-xdist passes the controller's to every worker); `device_type` ("cpu",
    "cuda") estimates durations from the records of that kind of device only; `machine` (a machine class, for
    `--same-machine`): a record of another class leaves its case pending."""
    results = Path(results)
    cells = cells_by_name()
    needed = needed_cells(claim_verdicts(results, profile)) if needed is None else needed
    durations = Durations.from_records(results, profile, default_seconds, device_type)
    planned = []
    for index, job in enumerate(jobs(profile, seeds, list(extra))):
        job_cells = tuple(cells[name] for name in job.cells)
        method = cell_config(job_cells[0], profile, job.seed, list(extra)).synth.method
        estimate, source = durations.estimate(job.case, method)
        state, seconds, accuracy, error, running = PENDING, None, None, None, None
        record = result_path(results, profile, job.case, job.seed)
        exists = record.exists()
        stored = read_stored(record) if exists else None
        if exists and stored_is_reusable(stored, machine):
            state = DONE
            # the report validates records; here they only feed a sum and a display
            with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
                seconds, accuracy = float(stored["seconds"]["total"]), stored["accuracy"].get("best_epoch")
        elif (running := running_info(results, profile, job.case, job.seed)) is not None:
            state = RUNNING
        elif (failure := read_failure(results, profile, job.case, job.seed)) is not None:
            state, error = FAILED, failure.get("error")
        is_needed = any(name in needed for name in job.cells)
        planned.append((0 if is_needed else 1, job.seed, index, PlannedCase(
            job.case, job.seed, job_cells, method, state, is_needed, estimate, source, seconds, accuracy, error,
            running)))
    return [p for *_, p in sorted(planned, key=lambda item: item[:3])]
