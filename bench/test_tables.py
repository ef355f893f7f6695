"""One benchmark case per table cell (`intraq.tables`: the supplementary's four tables and the main CIFAR-10 setting),
timed by pytest-benchmark.

Each case calls `intraq.campaign.run_cell`, the function every runner calls (pytest, pytest-xdist, the submitit
campaign): it runs the case under its lock or reuses the stored record, and writes the cell file the report
reads. A case that would not finish before `--deadline` is skipped and stays pending.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest
import torch

from intraq.campaign import DeadlineReached, PlannedCase, run_cell
from intraq.tables import Cell

if TYPE_CHECKING:
    from conftest import BenchOptions


def test_case(bench_cell: tuple[Cell, PlannedCase], bench_options: BenchOptions, bench_device: torch.device,
              benchmark: Any) -> None:
    cell, planned = bench_cell
    try:
        outcome = benchmark.pedantic(
            run_cell, args=(cell, planned.seed, bench_options.settings, bench_device),
            kwargs={"deadline": bench_options.deadline, "estimate": planned.estimate}, rounds=1, iterations=1,
            warmup_rounds=0,
        )
    except DeadlineReached as exc:
        pytest.skip(str(exc))
    record = outcome.record
    benchmark.extra_info.update({
        "table": cell.table, "cell": cell.key, "label": cell.label, "case": planned.case, "seed": planned.seed,
        "profile": record["profile"], "method": record["method"], "accuracy": record["accuracy"],
        "paper": outcome.written["paper"], "num_images": outcome.written["num_images"],
        "seconds": record["seconds"], "reused_stored_result": outcome.reused,
        "git_commit": record.get("git_commit"), "machine": record.get("machine"), "config": record.get("config"),
    })
    assert record["case"] == planned.case and record["seed"] == planned.seed
    for key in ("after_calibration", "final_epoch", "best_epoch", "teacher"):
        value = record["accuracy"][key]
        assert not math.isnan(value) and 0.0 <= value <= 100.0, f"{key} = {value}"
