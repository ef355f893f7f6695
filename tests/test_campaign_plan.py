"""Case enumeration, claim order, estimates, deadlines, version check and status: no case is run here."""

from __future__ import annotations

import json
import time

import pytest

import intraq
from intraq.campaign import CaseSettings, DeadlineReached, check_results_version, plan_cases, run_cell
from intraq.campaign.estimate import Durations, parse_duration
from intraq.campaign.plan import DONE, FAILED, PENDING, RUNNING, needed_cells
from intraq.campaign.state import case_lock, record_failure
from intraq.campaign.status import status_text
from intraq.errors import UserInputError
from intraq.tables import get_table, jobs


def _record(results, case, seed, seconds, method="intraq", version=intraq.__version__, device=None):
    path = results / "smoke" / f"{case}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"case": case, "seed": seed, "method": method, "seconds": {"total": seconds},
              "accuracy": {"best_epoch": 97.5}, "intraq_bench_version": version}
    if device is not None:
        record["machine"] = {"device": device}
    path.write_text(json.dumps(record))
    return path


def test_plan_is_the_tables_jobs_in_claim_order(tmp_path):
    planned = plan_cases("smoke", 2, tmp_path)
    assert sorted((p.case, p.seed) for p in planned) == sorted((j.case, j.seed) for j in jobs("smoke", 2))
    # No claim decided: every claim's cells, seed 0 before seed 1, then the cell no claim compares (1,280 images).
    assert [p.seed for p in planned[:-2]] == sorted(p.seed for p in planned[:-2])
    assert [c.name for p in planned[-2:] for c in p.cells] == ["data_amount-1280"] * 2
    # When only the comparison's claim is undecided, its cells (every seed) come before the rest.
    needed = {"comparison-real", "comparison-qimera"}
    order = plan_cases("smoke", 2, tmp_path, needed=needed)
    first = [p for p in order if p.needed]
    assert {c.name for p in first for c in p.cells} >= needed and len(first) == 4
    assert order[:4] == first and [p.seed for p in first] == [0, 0, 1, 1]


def test_decided_claims_release_their_cells():
    every = needed_cells({})
    assert "lor-L" in every and "data_amount-1280" not in every  # 1,280 is in no claim
    assert "lor-L" not in needed_cells({"lor_extras_add_nothing": "holds"})


def test_durations_estimate_from_the_case_then_method_then_profile_then_default(tmp_path):
    assert Durations.from_records(tmp_path, "smoke").estimate("x", "intraq") == (
        60.0, "default (no record of this profile yet)")
    _record(tmp_path, "aaa", 0, 10.0)
    _record(tmp_path, "aaa", 1, 20.0)
    _record(tmp_path, "bbb", 0, 100.0, method="squant")
    d = Durations.from_records(tmp_path, "smoke")
    assert d.estimate("aaa", "intraq")[0] == 15.0
    assert d.estimate("ccc", "squant")[0] == 100.0
    assert d.estimate("ccc", "qimera")[0] == 20.0  # median of 10, 20, 100


def test_durations_of_one_device_type_ignore_the_others(tmp_path):
    # a profile's CPU curve run (hours) must not keep a GPU campaign's deadline from starting its cases
    _record(tmp_path, "aaa", 0, 30000.0, device="cpu")
    _record(tmp_path, "aaa", 1, 400.0, device="cuda:0")
    _record(tmp_path, "bbb", 0, 300.0, device="cuda")
    _record(tmp_path, "ccc", 0, 20000.0)  # records without a machine ran on the CPU
    assert Durations.from_records(tmp_path, "smoke", device_type="cuda").estimate("aaa", "intraq")[0] == 400.0
    assert Durations.from_records(tmp_path, "smoke", device_type="cuda").estimate("ddd", "intraq")[0] == 350.0
    assert Durations.from_records(tmp_path, "smoke", device_type="cpu").estimate("ddd", "intraq")[0] == 25000.0
    assert Durations.from_records(tmp_path, "smoke").estimate("aaa", "intraq")[0] == 15200.0  # every record
    planned = {p.case: p for p in plan_cases("smoke", 1, tmp_path, device_type="cuda")}
    assert {p.estimate for p in planned.values() if p.method == "intraq"} == {350.0}


@pytest.mark.parametrize("text, seconds", [("12m", 720), ("1h30m", 5400), ("90s", 90), ("480", 480), (None, None)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "12 minutes", "0", "-5m"])
def test_parse_duration_rejects_nonsense(text):
    with pytest.raises(UserInputError, match="deadline"):
        parse_duration(text)


def test_results_of_another_version_are_refused_and_left_alone(tmp_path):
    path = _record(tmp_path, "aaa", 0, 10.0, version="9.3.0")
    before = path.read_bytes()
    with pytest.raises(UserInputError, match=r"9\.3\.0.*--results"):
        check_results_version(tmp_path, "smoke")
    assert path.read_bytes() == before
    _record(tmp_path, "aaa", 0, 10.0)  # this version's records are fine
    check_results_version(tmp_path, "smoke")


def test_a_case_that_would_pass_the_deadline_does_not_start(tmp_path):
    cell = get_table("comparison").cell("squant")
    settings = CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts")
    with pytest.raises(DeadlineReached, match="stays pending"):
        run_cell(cell, 0, settings, deadline=time.time() + 5, estimate=100.0)
    assert not (tmp_path / "results" / "smoke").exists() or not list((tmp_path / "results" / "smoke").glob("*.json"))


def test_status_shows_done_running_pending_and_failed(tmp_path):
    planned = plan_cases("smoke", 1, tmp_path)
    squant = next(p for p in planned if p.method == "squant")
    real = next(p for p in planned if p.method == "real")
    qimera = next(p for p in planned if p.method == "qimera")
    _record(tmp_path, squant.case, 0, 30.0, method="squant")
    record_failure(tmp_path, "smoke", qimera.case, 0, RuntimeError("out of memory"))
    with case_lock(tmp_path, "smoke", real.case, 0):
        states = {p.case: p.state for p in plan_cases("smoke", 1, tmp_path)}
        text = status_text("smoke", 1, tmp_path)
    assert states[squant.case] == DONE and states[real.case] == RUNNING and states[qimera.case] == FAILED
    assert sum(1 for s in states.values() if s == PENDING) == len(states) - 3
    assert "done 97.50" in text and "running@" in text and "FAILED" in text
    assert "RuntimeError: out of memory" in text and "--retry-failed" in text
    assert "compute spent: 0.5 min" in text and "estimated compute left" in text
    assert {p.case: p.state for p in plan_cases("smoke", 1, tmp_path)}[real.case] == PENDING


def test_a_stacked_record_counts_its_share_of_the_group_time(tmp_path):
    path = _record(tmp_path, "aaa", 0, 600.0, device="cuda")
    record = json.loads(path.read_text())
    record["finetune_path"] = {"fast": {"stacked_runs": 3, "capture": "cudagraph"}}
    path.write_text(json.dumps(record))
    assert Durations.from_records(tmp_path, "smoke", device_type="cuda").estimate("aaa", "intraq")[0] == 200.0
    record["seconds"]["stack_group_total"] = 900.0  # a later member's own total is shorter than its group's
    path.write_text(json.dumps(record))
    assert Durations.from_records(tmp_path, "smoke", device_type="cuda").estimate("aaa", "intraq")[0] == 300.0
