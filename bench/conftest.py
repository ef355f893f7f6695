"""Options and parametrization of the table cases: one test per table cell and seed.

    pytest bench                          # every cell at the embedded profile (smoke), seeds 0..N-1 (--seeds)
    pytest bench -k data_amount           # one table: data_amount | lor | mdc_vs_adi | comparison
    pytest bench --profile cifar10-cpu --data-root /data/cifar10 --seeds 3

Test ids are `<table>-<cell>-<case hash>-seed<N>`: `-k <hash>` selects one job (a case shared by several cells
runs once per seed and is reused from results/ by the others), so cases can be spread over machines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from intraq.results import default_results_dir
from intraq.tables import Cell, all_tables, cell_config

DEFAULT_PROFILE = "smoke"  # the embedded one: digits data, a teacher trained in seconds
# Three seeds: the fewest that give every claim's Welch interval a usable width (two leave df ≈ 1);
# --seeds or $INTRAQ_BENCH_SEEDS overrides it.
DEFAULT_SEEDS = int(os.environ.get("INTRAQ_BENCH_SEEDS", "3"))


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


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("intraq-bench")
    group.addoption("--profile", default=DEFAULT_PROFILE, help=f"profile of the cases (default {DEFAULT_PROFILE})")
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
    group.addoption("--set", dest="bench_overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a config field for every case (changes the case hashes)")


def _options(config: pytest.Config) -> BenchOptions:
    extra = [f"data.root={config.getoption('data_root')}"] if config.getoption("data_root") else []
    extra += list(config.getoption("bench_overrides"))
    artifacts = config.getoption("artifacts")
    return BenchOptions(
        profile=config.getoption("profile"), seeds=config.getoption("seeds"),
        results=Path(config.getoption("results") or default_results_dir(config.getoption("publish"))),
        artifacts=Path(artifacts) if artifacts else None,
        device=config.getoption("device"), threads=config.getoption("threads"),
        compile=config.getoption("compile"), extra=tuple(extra),
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("threads", None):
        torch.set_num_threads(config.getoption("threads"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_cell" not in metafunc.fixturenames:
        return
    from intraq.pipeline import case_hash

    opts = _options(metafunc.config)
    params, ids = [], []
    for seed in range(opts.seeds):
        for table in all_tables():
            for cell in table.cells:
                cfg = cell_config(cell, opts.profile, seed, list(opts.extra))
                params.append((cell, seed))
                ids.append(f"{cell.table}-{cell.key}-{case_hash(cfg)}-seed{seed}")
    metafunc.parametrize("bench_cell", params, ids=ids)


@pytest.fixture(scope="session")
def bench_options(request: pytest.FixtureRequest) -> BenchOptions:
    return _options(request.config)


@pytest.fixture(scope="session")
def bench_device(bench_options: BenchOptions) -> torch.device:
    from intraq.device import pick_device

    return pick_device(bench_options.device)


__all__ = ["BenchOptions", "Cell"]
