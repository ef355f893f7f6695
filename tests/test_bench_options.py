"""The bench's command line: a deadline no pending case fits in is refused before any case starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_refuses_a_deadline_shorter_than_every_case(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "bench" / "test_tables.py"), "-q", "-p", "no:cacheprovider",
         "--profile", "smoke", "--seeds", "1", "--results", str(tmp_path / "results"), "--deadline", "5s"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 4, out.stdout + out.stderr  # pytest's usage error
    assert "shorter than every pending case" in out.stderr and "longer --deadline" in out.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*-seed0.json"))


def test_bench_refuses_a_fast_capture_the_device_cannot_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "bench" / "test_tables.py"), "-q", "-p", "no:cacheprovider",
         "--profile", "smoke", "--seeds", "1", "--results", str(tmp_path / "results"), "--device", "cpu",
         "--fast", "cudagraph"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 4, out.stdout + out.stderr  # refused once, before any case
    assert "needs a CUDA device" in out.stderr
