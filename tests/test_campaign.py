"""`intraq campaign` on submitit's local executor (two tiny smoke cases), and its refusals of bad input."""

from __future__ import annotations

import json

import pytest
import torch

import intraq
import intraq.campaign.submit as submit
from intraq.campaign import CaseSettings, plan_cases
from intraq.campaign.plan import DONE
from intraq.campaign.state import record_failure
from intraq.campaign.submit import CampaignOptions, launch_campaign
from intraq.cli import main
from intraq.errors import UserInputError

TWO_CASES = ("comparison-squant", "comparison-real")


@pytest.fixture
def settings(tmp_path, tiny_overrides):
    return CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts", tuple(tiny_overrides))


def _train_teacher_once(settings: CaseSettings) -> None:
    from intraq.config import apply_overrides
    from intraq.data import build_data
    from intraq.profiles import get_profile
    from intraq.teacher.load import get_teacher

    cfg = apply_overrides(get_profile("smoke"), list(settings.extra))
    get_teacher(cfg.teacher, build_data(cfg.data), torch.device("cpu"), settings.artifacts, progress=False)


@pytest.mark.slow
def test_local_campaign_runs_two_cases_once(settings, tmp_path):
    _train_teacher_once(settings)  # both jobs need it; they run side by side
    options = CampaignOptions(executor="local", seeds=1, only=TWO_CASES, max_running=2, poll_seconds=0.5)
    said: list[str] = []
    report = launch_campaign(settings, options, said.append)
    assert [o["state"] for o in report.outcomes] == ["done", "done"], said
    assert not any(o["reused"] for o in report.outcomes)
    folder = settings.results / "smoke"
    for p in report.submitted:
        record = json.loads((folder / f"{p.case}-seed0.json").read_text())
        assert record["case"] == p.case and 0 <= record["accuracy"]["best_epoch"] <= 100
    cells = sorted(f.name for f in (folder / "cells").glob("*.json"))
    assert cells == ["comparison--real-seed0.json", "comparison--squant-seed0.json"]
    states = {c.name: p.state for p in plan_cases("smoke", 1, settings.results, settings.extra) for c in p.cells}
    assert states["comparison-squant"] == states["comparison-real"] == DONE
    # A second campaign on the same folder finds nothing to run.
    again = launch_campaign(settings, options, said.append)
    assert again.submitted == [] and "nothing to run" in said[-1]


def test_failed_case_is_kept_and_retried_only_when_asked(settings, monkeypatch):
    squant = next(p for p in plan_cases("smoke", 1, settings.results, settings.extra) if p.method == "squant")
    record_failure(settings.results, "smoke", squant.case, 0, RuntimeError("CUDA error: out of memory"))
    said: list[str] = []
    report = launch_campaign(settings, CampaignOptions(seeds=1, only=("comparison-squant",)), said.append)
    assert report.submitted == [] and "--retry-failed" in said[0] and "out of memory" in said[0]
    submitted = []
    monkeypatch.setattr(submit, "_executor", lambda *a: submitted.append(a) or pytest.skip("stop before submit"))
    with pytest.raises(pytest.skip.Exception):
        launch_campaign(settings, CampaignOptions(seeds=1, only=("comparison-squant",), retry_failed=True))
    assert submitted  # with --retry-failed the case goes to the executor


def _cli(tmp_path, *args):
    return main(["campaign", "--profile", "smoke", "--seeds", "1", "--results", str(tmp_path / "results"),
                 "--artifacts", str(tmp_path / "artifacts"), *args])


def test_missing_slurm_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(submit.shutil, "which", lambda name: None)
    assert _cli(tmp_path, "--executor", "slurm", "--only", "comparison-squant") == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and "--executor local" in err and "slurm-wlm" in err


def test_unknown_executor_is_refused(tmp_path, settings):
    with pytest.raises(SystemExit) as exc:
        _cli(tmp_path, "--executor", "kubernetes")
    assert exc.value.code == 2
    with pytest.raises(UserInputError, match="known: local, slurm"):
        launch_campaign(settings, CampaignOptions(executor="kubernetes"))


def test_deadline_shorter_than_every_case_is_an_error(tmp_path, capsys):
    assert _cli(tmp_path, "--deadline", "20s") == 2  # the smoke default estimate is 60 s a case
    err = capsys.readouterr().err
    assert "shorter than every pending case" in err and "longer --deadline" in err
    assert not (tmp_path / "results" / "smoke").exists() or not list((tmp_path / "results" / "smoke").glob("*.json"))


def test_results_of_another_version_stop_campaign_and_status(tmp_path, capsys):
    record = tmp_path / "results" / "smoke" / "abc-seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"case": "abc", "seed": 0, "intraq_bench_version": "0.0.1",
                                  "seconds": {"total": 1.0}}))
    before = record.read_bytes()
    assert _cli(tmp_path) == 2
    assert main(["status", "--profile", "smoke", "--results", str(tmp_path / "results")]) == 2
    assert "written by intraq-bench 0.0.1" in capsys.readouterr().err
    assert record.read_bytes() == before


def test_unknown_cell_in_only_is_an_error(tmp_path, capsys):
    assert _cli(tmp_path, "--only", "comparison-nosuch") == 2
    assert "intraq status" in capsys.readouterr().err


def test_status_prints_the_table(tmp_path, capsys):
    assert main(["status", "--profile", "smoke", "--seeds", "2", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "MDC beats ADI [no results]" in out and "seed 1" in out and "44 runs" in out and "44 pending" in out


class _FakeJob:
    job_id = "fake"

    def __init__(self, result):
        self._result = result

    def done(self):
        return True

    def result(self):
        return self._result


class _FakeExecutor:
    def __init__(self):
        self.submitted = []

    def submit(self, fn, jobs, *args):
        self.submitted.append(jobs)
        return _FakeJob([{"case": c, "seed": s, "state": "done", "reused": False} for c, s, _ in jobs])


def test_local_campaign_leaves_cases_that_would_pass_the_deadline_pending(settings, monkeypatch):
    folder = settings.results / "smoke"
    folder.mkdir(parents=True)
    for name, method, seconds in (("other1", "squant", 10.0), ("other2", "real", 1000.0)):
        (folder / f"{name}-seed0.json").write_text(json.dumps({
            "case": name, "seed": 0, "method": method, "seconds": {"total": seconds},
            "intraq_bench_version": intraq.__version__}))
    fake = _FakeExecutor()
    monkeypatch.setattr(submit, "_executor", lambda *a: fake)
    said: list[str] = []
    report = launch_campaign(settings, CampaignOptions(seeds=1, only=("comparison-real", "comparison-squant"),
                                                       deadline=100.0, poll_seconds=0.01), said.append)
    states = {o["case"]: o["state"] for o in report.outcomes}
    squant = next(p for p in report.submitted)
    assert squant.method == "squant" and len(fake.submitted) == 1  # the 1,000 s real case was not submitted
    assert sorted(states.values()) == ["done", "pending"]
    assert any(line.startswith("pending:") and "deadline" in line for line in said)
