"""One run per case at a time: two processes asking for the same case compute it once (issue: concurrent runs
on one results folder both redid all the work). The case's work is replaced by a slow stand-in that records
each computation, so the test shows the waiting and the reuse in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
from pathlib import Path
import intraq.pipeline as pipeline
import intraq.report.collect  # noqa: F401 - imported before the start signal, as run_cell does
from intraq.campaign import CaseSettings, run_cell
from intraq.results import result_path, write_result
from intraq.tables import get_table

results, log, started, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])

def slow_run_case(cfg, paths, *args, **kwargs):
    out = result_path(paths.results, cfg.profile, pipeline.case_hash(cfg), cfg.seed)
    if out.exists():
        return json.loads(out.read_text())
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    started.touch()
    time.sleep(3)
    record = {"case": pipeline.case_hash(cfg), "seed": cfg.seed, "profile": cfg.profile, "method": "squant",
              "accuracy": {"best_epoch": 90.0}, "seconds": {"total": 3.0}, "computed_by": os.getpid()}
    write_result(record, out)
    return record

pipeline.run_case = slow_run_case
Path(f"{go}.ready").touch()
while not go.exists():  # both processes import first, then start when told
    time.sleep(0.05)
outcome = run_cell(get_table("comparison").cell("squant"), 0, CaseSettings("smoke", results, results / "art"),
                   device="cpu")
print(json.dumps({"reused": outcome.reused, "pid": os.getpid(), "by": outcome.record["computed_by"],
                  "seconds": outcome.seconds}))
"""


def _start(tmp_path: Path, go: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "results"), str(tmp_path / "log"),
                             str(tmp_path / "started"), str(tmp_path / go)], env=env, stdout=subprocess.PIPE, text=True)


def test_two_processes_on_one_case_compute_it_once(tmp_path):
    first, second = _start(tmp_path, "go-first"), _start(tmp_path, "go-second")
    deadline = time.time() + 120
    while not all((tmp_path / f"go-{n}.ready").exists() for n in ("first", "second")):  # both imported
        assert time.time() < deadline, "the processes did not start"
        time.sleep(0.1)
    (tmp_path / "go-first").touch()
    while not (tmp_path / "started").exists():  # the first holds the lock and computes
        assert first.poll() is None and time.time() < deadline, "the first process never started computing"
        time.sleep(0.1)
    (tmp_path / "go-second").touch()  # asks for the same case while the first still computes it
    outs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0
    assert (tmp_path / "log").read_text().split() == [str(outs[0]["pid"])]  # computed once, by the first
    assert outs[0]["reused"] is False and outs[1]["reused"] is True  # the second waited, then reused
    assert outs[1]["by"] == outs[0]["pid"] and outs[1]["seconds"] > 1.0  # it waited for the first's lock
    cell_file = tmp_path / "results" / "smoke" / "cells" / "comparison--squant-seed0.json"
    assert json.loads(cell_file.read_text())["accuracy"]["best_epoch"] == 90.0
    assert not list((tmp_path / "results" / "smoke" / ".campaign" / "running").iterdir())


def test_a_second_intraq_run_of_a_running_case_waits_and_reuses(tmp_path):
    """`intraq run` takes the same lock as the bench: the second of two identical commands says it waits, then
    reuses the first one's result instead of computing it again."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    env.pop("INTRAQ_RESULTS", None)
    command = [sys.executable, "-m", "intraq.cli", "run", "--profile", "smoke", "--method", "intraq", "--seed", "9",
               "--threads", "1", "--quiet", "--artifacts", str(tmp_path / "artifacts"), "--results",
               str(tmp_path / "results"), "--set", "synth.iterations=60", "--set", "finetune.epochs=4"]
    repo = Path(__file__).resolve().parents[1]
    first = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    running = tmp_path / "results" / "smoke" / ".campaign" / "running"
    deadline = time.time() + 120
    while not (running.exists() and any(running.iterdir())):
        assert first.poll() is None and time.time() < deadline, "the first run never took its case's lock"
        time.sleep(0.1)
    second = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    out_first = first.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "waiting for it" in second.stdout and "reused the stored result" in second.stdout
    assert "reused" not in out_first
    assert len(list((tmp_path / "results" / "smoke").glob("*-seed9.json"))) == 1
