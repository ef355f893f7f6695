"""Options and parametrization of the table cases: one test per table cell and seed.

    pytest bench                          # every cell at the embedded profile (smoke), seeds 0..N-1 (--seeds)
    pytest bench -k data_amount           # one table: data_amount | lor | mdc_vs_adi | comparison | main_cifar10
    pytest bench -n 4 --deadline 12m      # four pytest-xdist workers; start no case that would end after 12 min
    pytest bench --profile cifar10-cpu --data-root /data/cifar10 --seeds 3

Test ids are `<table>-<cell>-<case hash>-seed<N>`: `-k <hash>` selects one case. The cases come from
`intraq.campaign.plan_cases` (the one enumeration every runner uses) in claim order: the cells an undecided claim
needs first, seed 0 of every case before seed 1. A cell whose case another cell already shows (the IntraQ W4A4
cell is in five tables) comes after every distinct case, so it reuses the stored result; if two workers still
meet on one case, its lock makes the second wait and reuse.

With `-n N`, the bench keeps xdist's `load` scheduling and sets `--maxschedchunk 1` (unless given): each worker
holds at most its running case and the next, so cases start in claim order as closely as xdist allows
(`loadscope`/`loadgroup` would hand whole groups out up front; the lock already keeps shared cases single).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from intraq.campaign import CaseSettings, PlannedCase, check_results_version, plan_cases
from intraq.campaign.estimate import parse_duration
from intraq.campaign.plan import DONE, claim_verdicts, needed_cells
from intraq.cli import FAST_HELP, SAME_MACHINE_HELP
from intraq.config_file import resolve_profile
from intraq.errors import UserInputError
from intraq.interrupts import stop_signals_as_interrupt
from intraq.results import default_results_dir
from intraq.tables import Cell

DEFAULT_PROFILE = "smoke"  # the embedded one: digits data, a teacher trained in seconds
# Three seeds: the fewest that give every claim's Welch interval a usable width (two leave df ≈ 1);
# --seeds or $INTRAQ_BENCH_SEEDS overrides it.
DEFAULT_SEEDS = int(os.environ.get("INTRAQ_BENCH_SEEDS", "3"))
PLAN_KEY = "intraq_bench_plan"  # what the controller hands every xdist worker: deadline and claim order


@dataclass(frozen=True)
class BenchOptions:
    """What every case needs from the command line."""

    profile: str
    seeds: int
    results: Path
    artifacts: Path | None
    device: str
    threads: int
    compile: bool  # torch.compile the generation loss (worth it at cifar10 scale, not at smoke)
    extra: tuple[str, ...]  # overrides applied before the cell's (data.root, --set ...)
    deadline: float | None = None  # wall-clock time (time.time()) after which no case starts
    default_seconds: float | None = None
    fast: str | None = None  # capture mode of the fast path, or None for the reference path
    same_machine: bool = False  # a stored record of another machine class is run again here (intraq.reuse)

    @property
    def settings(self) -> CaseSettings:
        return CaseSettings(self.profile, self.results, self.artifacts, self.extra, self.device, self.threads,
                            self.compile, self.default_seconds, self.fast, self.same_machine)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("intraq-bench")
    group.addoption("--profile", default=DEFAULT_PROFILE,
                    help=f"profile of the cases, or a study file (my-study.toml) (default {DEFAULT_PROFILE})")
    group.addoption("--seeds", type=int, default=DEFAULT_SEEDS,
                    help=f"seeds 0..N-1 per cell (default {DEFAULT_SEEDS}; $INTRAQ_BENCH_SEEDS)")
    group.addoption("--results", default=None, help="results folder (default $INTRAQ_RESULTS, else results/local)")
    group.addoption("--publish", action="store_true", help="write the committed results/<profile>/ (maintainers)")
    group.addoption("--artifacts", default=None, help="artifact folder (default $INTRAQ_ARTIFACTS or ./artifacts)")
    group.addoption("--data-root", default=os.environ.get("INTRAQ_DATA_ROOT"),
                    help="CIFAR-10 / ImageNet location (data.root; default $INTRAQ_DATA_ROOT)")
    group.addoption("--device", default="auto", help="auto | cpu | cuda[:N]")
    group.addoption("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: small models on a shared 2-core CPU run several times "
                    "faster on one thread than on two)")
    group.addoption("--compile", action="store_true",
                    help="torch.compile the image-generation loss (same numbers; faster for long runs)")
    group.addoption("--fast", nargs="?", const="auto", default=None, metavar="CAPTURE", help=FAST_HELP)
    group.addoption("--same-machine", action="store_true", help=SAME_MACHINE_HELP)
    group.addoption("--set", dest="bench_overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a config field for every case (changes the case hashes)")
    group.addoption("--deadline", default=None, metavar="DURATION",
                    help="e.g. 12m, 1h30m: start no case whose estimated duration (earlier records of the profile, "
                    "else --default-case-seconds) ends after it; those are skipped and stay pending")
    group.addoption("--default-case-seconds", type=float, default=None,
                    help="estimated duration of a case when the profile has no record yet (default: per profile)")


def _options(config: pytest.Config) -> BenchOptions:
    extra = [f"data.root={config.getoption('data_root')}"] if config.getoption("data_root") else []
    extra += list(config.getoption("bench_overrides"))
    artifacts = config.getoption("artifacts")
    plan = getattr(config, "workerinput", {}).get(PLAN_KEY) or config.stash.get(_PLAN, {})
    return BenchOptions(
        profile=resolve_profile(config.getoption("profile")), seeds=config.getoption("seeds"),
        results=Path(config.getoption("results") or default_results_dir(config.getoption("publish"))),
        artifacts=Path(artifacts) if artifacts else None,
        device=config.getoption("device"), threads=config.getoption("threads"),
        compile=config.getoption("compile"), extra=tuple(extra), deadline=plan.get("deadline"),
        default_seconds=config.getoption("default_case_seconds"), fast=config.getoption("fast"),
        same_machine=config.getoption("same_machine"),
    )


_PLAN = pytest.StashKey[dict]()


class _XdistPlan:
    """Hands the controller's deadline and claim order to every worker (so all collect the same order)."""

    def __init__(self, plan: dict) -> None:
        self.plan = plan

    def pytest_configure_node(self, node) -> None:  # noqa: ANN001 - xdist's WorkerController
        node.workerinput[PLAN_KEY] = self.plan


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):  # noqa: ANN201 - a hook wrapper's generator
    """SIGTERM (kill, scancel, Slurm at its time limit) stops a case like Ctrl-C, as `intraq` does: the case saves
    its checkpoint on the way out, and the same command resumes it."""
    with stop_signals_as_interrupt():
        return (yield)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("threads", None):
        torch.set_num_threads(config.getoption("threads"))
    if hasattr(config, "workerinput") or config.getoption("profile", None) is None:
        return  # a worker: the controller planned
    opts = _options(config)
    try:
        if opts.fast is not None:  # a capture the device cannot run fails here, not once per case
            from intraq.device import pick_device
            from intraq.fast.settings import fast_settings_for

            fast_settings_for(pick_device(opts.device), opts.fast)
        check_results_version(opts.results, opts.profile)
        deadline_s = parse_duration(config.getoption("deadline"))
        needed = needed_cells(claim_verdicts(opts.results, opts.profile))
    except UserInputError as exc:
        raise pytest.UsageError(str(exc)) from exc
    plan = {"deadline": None if deadline_s is None else time.time() + deadline_s, "needed": sorted(needed)}
    if deadline_s is not None:
        pending = [p for p in _plan(opts, set(needed)) if p.state != DONE]
        if pending and min(p.estimate for p in pending) > deadline_s:
            shortest = min(pending, key=lambda p: p.estimate)
            raise pytest.UsageError(
                f"--deadline {config.getoption('deadline')} is shorter than every pending case (the shortest, "
                f"{shortest.name}, is estimated at {shortest.estimate:.0f} s from {shortest.estimate_source}); "
                "give a longer --deadline, or --default-case-seconds if the estimate is a default")
    config.stash[_PLAN] = plan
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistPlan(plan), "intraq-bench-xdist-plan")
        if getattr(config.option, "dist", "no") == "load" and getattr(config.option, "maxschedchunk", 0) is None:
            config.option.maxschedchunk = 1


def _plan(opts: BenchOptions, needed: set[str] | None) -> list[PlannedCase]:
    from intraq.device import pick_device
    from intraq.reuse import required_class

    device = pick_device(opts.device)
    return plan_cases(opts.profile, opts.seeds, opts.results, opts.extra, opts.default_seconds, needed, device.type,
                      required_class(device, opts.same_machine))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_cell" not in metafunc.fixturenames:
        return
    opts = _options(metafunc.config)
    plan = getattr(metafunc.config, "workerinput", {}).get(PLAN_KEY) or metafunc.config.stash.get(_PLAN, {})
    planned = _plan(opts, set(plan["needed"]) if "needed" in plan else None)
    first = [(p, p.cells[0]) for p in planned]
    shared = [(p, cell) for p in planned for cell in p.cells[1:]]  # their case is stored by then: reuse
    params = [(cell, p) for p, cell in first + shared]
    ids = [f"{cell.table}-{cell.key}-{p.case}-seed{p.seed}" for cell, p in params]
    metafunc.parametrize("bench_cell", params, ids=ids)


@pytest.fixture(scope="session")
def bench_options(request: pytest.FixtureRequest) -> BenchOptions:
    return _options(request.config)


@pytest.fixture(scope="session")
def bench_device(bench_options: BenchOptions) -> torch.device:
    from intraq.device import pick_device

    return pick_device(bench_options.device)


__all__ = ["BenchOptions", "Cell"]
