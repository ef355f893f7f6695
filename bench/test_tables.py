"""One benchmark case per table cell (`intraq.tables`: the supplementary's four tables and the main CIFAR-10 setting),
timed by pytest-benchmark.

Each case runs `run_case` (or returns its stored record: shared cells and resumed runs compute nothing), then
writes the cell file the report reads and, for the figure cells, the figure data. The measured accuracies, the
paper's value and the run's metadata go to pytest-benchmark's extra_info as well.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from intraq.pipeline import RunPaths, case_hash, run_case
from intraq.report.collect import save_figure_data, write_cell_record
from intraq.results import result_path
from intraq.tables import Cell, cell_config

if TYPE_CHECKING:
    from conftest import BenchOptions


def test_case(bench_cell: tuple[Cell, int], bench_options: BenchOptions, bench_device: torch.device,
              benchmark: Any) -> None:
    cell, seed = bench_cell
    opts = bench_options
    cfg = cell_config(cell, opts.profile, seed, list(opts.extra))
    paths = RunPaths.default(opts.artifacts, opts.results)
    name = case_hash(cfg)
    reused = result_path(paths.results, cfg.profile, name, seed).exists()

    record = benchmark.pedantic(
        run_case, args=(cfg, paths, bench_device), kwargs={"progress": False, "compile": opts.compile},
        rounds=1, iterations=1, warmup_rounds=0,
    )
    if cell.figures:
        save_figure_data(cfg, cell, paths.results, opts.artifacts, bench_device)
    written = write_cell_record(cell, cfg, record, paths.results)

    benchmark.extra_info.update({
        "table": cell.table, "cell": cell.key, "label": cell.label, "case": name, "seed": seed,
        "profile": cfg.profile, "method": record["method"], "accuracy": record["accuracy"],
        "paper": written["paper"], "num_images": written["num_images"], "seconds": record["seconds"],
        "reused_stored_result": reused, "git_commit": record.get("git_commit"), "machine": record.get("machine"),
        "config": record.get("config"),
    })
    assert record["case"] == name and record["seed"] == seed
    for key in ("after_calibration", "final_epoch", "best_epoch", "teacher"):
        value = record["accuracy"][key]
        assert not math.isnan(value) and 0.0 <= value <= 100.0, f"{key} = {value}"
