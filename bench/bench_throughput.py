"""`pytest bench -k throughput`: generation and fine-tuning throughput of ResNet-20 at 32x32, batch 256.

Each figure is stored in pytest-benchmark's extra_info and in results/throughput/<host>.json (with the
machine, torch version and thread count), so the report can show it beside the matmul peak.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from intraq.results import git_commit, machine_info, now_utc, write_result
from intraq.teacher.models import build_model
from intraq.throughput import matmul_peaks, measure_finetune, measure_generation

RESULTS = Path("results") / "throughput"


@pytest.fixture(scope="module")
def peaks() -> dict[str, float]:
    """Measured once per run, so every fraction below is relative to the same peak that is stored."""
    return matmul_peaks(repeats=10)


@pytest.fixture(scope="module")
def peak(peaks) -> float:
    return max(peaks.values())


@pytest.fixture(scope="module")
def collected():
    rows: dict[str, dict] = {}
    yield rows
    if rows:
        write_result(
            {"measurements": rows, "machine": machine_info(), "git_commit": git_commit(), "finished": now_utc()},
            RESULTS / f"{platform.node() or 'machine'}.json",
        )


@pytest.mark.parametrize("path", ["fast", "reference", "compiled"])
def test_throughput_generation(benchmark, peak, collected, path):
    fast = path != "reference"
    result = benchmark.pedantic(
        lambda: measure_generation(
            build_model("resnet20", 10), channels_last=fast, fast_bns=fast, peak=peak, compiled=path == "compiled"
        ),
        rounds=1, iterations=1,
    )
    benchmark.extra_info.update(result.to_dict())
    collected[f"generation-{path}"] = result.to_dict()
    assert result.items_per_second > 0


def test_throughput_finetune(benchmark, peak, collected):
    result = benchmark.pedantic(
        lambda: measure_finetune(build_model("resnet20", 10), peak=peak), rounds=1, iterations=1
    )
    benchmark.extra_info.update(result.to_dict())
    collected["finetune"] = result.to_dict()
    assert result.items_per_second > 0


def test_throughput_matmul_peak(benchmark, peaks, collected):
    benchmark.pedantic(lambda: matmul_peaks(repeats=1), rounds=1, iterations=1)  # the timing of one measurement
    benchmark.extra_info.update({f"{k}_gflops": v / 1e9 for k, v in peaks.items()})
    collected["matmul_peak"] = {"flops": max(peaks.values()), "by_kernel": peaks, "threads": torch.get_num_threads()}
