"""A campaign job stopped by a signal (Slurm's SIGTERM, submitit's time-limit signal): its cases checkpoint and
note their sitting like Ctrl-C, and the job ends with every case pending, not failed, so the next campaign
resumes them. One process per job, and a job's worker processes (`--jobs-per-gpu`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from intraq.campaign.state import read_failure
from intraq.interrupts import stop_signals, stop_signals_as_interrupt, stop_signals_blocked, stop_signals_noted

REPO = Path(__file__).resolve().parents[1]
TINY = ("teacher.train_epochs=1", "synth.num_images=8", "synth.batch_size=8", "synth.iterations=50000")
CELLS = ("mdc_vs_adi-mdc", "mdc_vs_adi-adi")

JOB_SCRIPT = """
import json, sys
from pathlib import Path
from intraq.campaign.run import CaseSettings, run_jobs
from intraq.pipeline import case_hash
from intraq.tables import cell_config, cells_by_name

results, artifacts, parallel, extra, cells = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \\
    tuple(sys.argv[4].split(",")), sys.argv[5].split(",")
settings = CaseSettings("smoke", results, artifacts, extra, device="cpu", threads=1)
by_name = cells_by_name()
jobs = [(case_hash(cell_config(by_name[c], "smoke", 0, list(extra))), 0, [c]) for c in cells]
print(json.dumps(run_jobs(jobs, settings, parallel=parallel)))
"""


def _stop_a_job(tmp_path: Path, parallel: int, cells: tuple[str, ...], in_synthesis: int,
                to_every_process: bool = False) -> list[dict]:
    """Run the job in its own process, send SIGTERM to that process alone (or, as Slurm does, to every process
    of the job) once `in_synthesis` of its cases are in their synthesis loops, and return its outcomes."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    art = tmp_path / "art"
    command = [sys.executable, "-c", JOB_SCRIPT, str(tmp_path / "results"), str(art), str(parallel), ",".join(TINY),
               ",".join(cells)]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while len(list(art.glob("synthesis/*/"))) < in_synthesis:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(15)  # past the sets' setup, into their loops
        if to_every_process:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log.read_text()  # a clean end: submitit keeps the summaries
    return json.loads(out.strip().splitlines()[-1])


def _assert_stopped_and_saved(tmp_path: Path, outcome: dict) -> None:
    assert outcome["state"] == "pending" and outcome["stopped"], outcome
    assert read_failure(tmp_path / "results", "smoke", outcome["case"], 0) is None  # not failed: the next run resumes
    ledger = tmp_path / "art" / "runs" / f"{outcome['case']}-seed0" / "earlier-sittings.json"
    assert json.loads(ledger.read_text())[0]["seconds"] > 0  # the sitting is noted for the record's total


@pytest.mark.slow
def test_a_stopped_job_saves_its_case_and_leaves_the_rest_pending(tmp_path: Path) -> None:
    first, second = _stop_a_job(tmp_path, 1, CELLS, in_synthesis=1)
    _assert_stopped_and_saved(tmp_path, first)
    assert second["state"] == "pending" and second["seconds"] == 0.0  # not begun after the signal
    (partial,) = (tmp_path / "art" / "synthesis").rglob("*.partial.pt")
    assert torch.load(partial, weights_only=True)["iteration"] > 0
    assert not list((tmp_path / "results").rglob("*-seed0.json"))


@pytest.mark.slow
@pytest.mark.parametrize("to_every_process", [False, True], ids=["to-the-job-process", "to-every-process"])
def test_a_stopped_jobs_worker_processes_save_their_cases(tmp_path: Path, to_every_process: bool) -> None:
    """submitit's local executor signals the job's process only: its workers, each in a case, must stop too.
    Slurm signals every process: each worker then gets a second SIGTERM from the job's process while it saves."""
    outcomes = _stop_a_job(tmp_path, 2, CELLS, in_synthesis=2, to_every_process=to_every_process)
    for outcome in outcomes:
        _assert_stopped_and_saved(tmp_path, outcome)
    partials = list((tmp_path / "art" / "synthesis").rglob("*.partial.pt"))
    assert len(partials) == 2 and all(torch.load(p, weights_only=True)["iteration"] > 0 for p in partials)


def test_submitits_time_limit_signal_is_a_stop_signal_in_its_jobs(monkeypatch) -> None:
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert stop_signals() == (signal.SIGTERM,)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert stop_signals() == (signal.SIGTERM, signal.SIGUSR2)  # submitit's default
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "INT")
    assert stop_signals() == (signal.SIGTERM,)  # Ctrl-C is handled as itself
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert stop_signals() == (signal.SIGTERM, signal.SIGUSR1)
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(KeyboardInterrupt), stop_signals_as_interrupt():
        signal.raise_signal(signal.SIGUSR1)
        time.sleep(1)
    assert signal.getsignal(signal.SIGUSR1) == before  # put back


def test_only_the_first_stop_signal_interrupts(monkeypatch) -> None:
    """Slurm signals every process of a job, and a job passes the signal on to its workers: the second one, while
    the first is being handled (the case saving its checkpoint), must not cut that short."""
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    saved = False
    with stop_signals_as_interrupt():
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(1)
        except KeyboardInterrupt:
            signal.raise_signal(signal.SIGTERM)  # arrives during the save
            saved = True
    assert saved


def test_between_two_cases_a_stop_signal_is_noted_and_a_blocked_one_waits(monkeypatch) -> None:
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    with stop_signals_noted() as arrived:
        with stop_signals_blocked():  # as while a job starts its worker processes
            signal.raise_signal(signal.SIGTERM)
            assert arrived == []
        time.sleep(0.1)
        assert arrived == [signal.SIGTERM]  # delivered once the block ended, and noted rather than raised


def test_a_stopped_lone_case_stops_a_stacked_campaign(tmp_path: Path, monkeypatch) -> None:
    """`--stack`: a group of several cases stops on Ctrl-C; a case run alone (no stage 2 to share) must too, not
    go on to the next group."""
    import intraq.campaign.stacked as stacked
    from intraq.campaign import CaseSettings
    from intraq.campaign.run import _not_started
    from intraq.campaign.submit import CampaignOptions

    ran = []
    monkeypatch.setattr(stacked, "run_job", lambda case, seed, cells, settings: ran.append(case) or _not_started(
        (case, seed, cells)))
    settings = CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts", TINY, device="cpu", fast="none")
    with pytest.raises(KeyboardInterrupt):
        stacked.run_stacked_campaign(settings, CampaignOptions(seeds=2, only=("comparison-squant",)), 4, print)
    assert len(ran) == 1  # seed 1 was not begun
