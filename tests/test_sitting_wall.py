"""A case that outlives a sitting: its record's `seconds.total` counts the sittings that stopped before it."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

import intraq.finetune.trainer as trainer_mod
from intraq.campaign.estimate import Durations
from intraq.config import apply_overrides
from intraq.errors import UserInputError
from intraq.pipeline import RunPaths, case_hash, run_case
from intraq.profiles import get_profile
from intraq.report.timing import compute_of
from intraq.sitting_wall import LEDGER, drop_counted, note_sitting, read_ledger, total_seconds


def _entry(started: str, seconds: float, device: str = "cpu") -> dict:
    return {"started": started, "seconds": seconds, "device": device, "hostname": "h"}


def test_ledger_adds_up_and_forgets_exactly_what_a_record_counted(tmp_path):
    run_dir = tmp_path / "runs" / "abc-seed0"
    assert read_ledger(run_dir) == [] and total_seconds([]) == 0.0
    first, second = _entry("2026-11-30T07:00:00+00:00", 100.0), _entry("2026-11-30T09:00:00+00:00", 20.5)
    note_sitting(run_dir, first)
    note_sitting(run_dir, second)
    assert read_ledger(run_dir) == [first, second] and total_seconds(read_ledger(run_dir)) == 120.5
    drop_counted(run_dir, [first])  # a record counted the first: the second (a later re-run's) stays
    assert read_ledger(run_dir) == [second]
    drop_counted(run_dir, [second])
    assert not (run_dir / LEDGER).exists()


@pytest.mark.parametrize("text", ['{"seconds": 3}', '[{"seconds": 3, "started": "yesterday"}]',
                                  '[{"seconds": 3, "started": "2026-11-30T07:00:00"}]', "[{"])
def test_a_damaged_ledger_names_the_fix(tmp_path, text):
    (tmp_path / LEDGER).write_text(text)
    with pytest.raises(UserInputError, match="delete it"):
        read_ledger(tmp_path)


def test_noting_never_raises(tmp_path, capsys):
    """It runs while the interrupt is on its way out: a damaged ledger must not replace that exception."""
    (tmp_path / LEDGER).write_text("[{")
    note_sitting(tmp_path, _entry("2026-11-30T07:00:00+00:00", 1.0))
    assert "could not note this sitting" in capsys.readouterr().err


@pytest.fixture
def real_case(tmp_path, tiny_overrides):
    paths = RunPaths(artifacts=tmp_path / "artifacts", results=tmp_path / "results")
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=real"])
    return paths, cfg, paths.artifacts / "runs" / f"{case_hash(cfg)}-seed0"


def _interrupted(monkeypatch, paths, cfg, force=False, before=None):
    """Run the case and stop it in its second KD epoch (after one checkpointed epoch), a second in."""
    original, calls = trainer_mod.kd_backward, {"n": 0}

    def slow_then_interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            time.sleep(1.0)
            if before is not None:
                before()
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "kd_backward", slow_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_case(cfg, paths, progress=False, force=force)
    monkeypatch.setattr(trainer_mod, "kd_backward", original)


def test_resumed_case_counts_the_interrupted_sitting(real_case, monkeypatch):
    paths, cfg, run_dir = real_case
    _interrupted(monkeypatch, paths, cfg)
    (first,) = read_ledger(run_dir)
    assert first["seconds"] >= 1.0 and first["device"] == "cpu" and "git_commit" in first

    record = run_case(cfg, paths, progress=False)
    seconds = record["seconds"]
    assert seconds["earlier_sittings"] == pytest.approx(first["seconds"])
    assert seconds["total"] == pytest.approx(seconds["this_sitting"] + first["seconds"])
    assert record["earlier_sittings"] == [first]  # where and when, in the record
    assert len(record["finetune_sittings"]) == 2  # it did resume from the checkpoint
    assert not (run_dir / LEDGER).exists()  # counted once: gone with the checkpoints

    # The report's wall time covers both sittings; the campaign's estimate takes the whole total.
    stored = paths.results / "smoke" / f"{record['case']}-seed0.json"
    compute = compute_of(paths.results, "smoke", [(record["case"], 0, seconds["total"])])
    last = datetime.fromisoformat(record["finished"]) - datetime.fromisoformat(record["started"])
    assert compute.timed_runs == 1  # and the earlier sitting's span adds to the last's (timestamps to the second)
    assert compute.wall_seconds >= last.total_seconds() + first["seconds"] - 1.0
    assert Durations.from_records(paths.results, "smoke").by_case[record["case"]] == [seconds["total"]]
    # resumed on a GPU after a CPU sitting: its total is neither's, and estimates leave it out
    blob = json.loads(stored.read_text())
    blob["machine"]["device"] = "cuda:0"
    stored.write_text(json.dumps(blob))
    assert record["case"] not in Durations.from_records(paths.results, "smoke").by_case


def test_a_forced_rerun_counts_its_own_sittings_only(real_case, monkeypatch):
    paths, cfg, run_dir = real_case
    _interrupted(monkeypatch, paths, cfg)
    record = run_case(cfg, paths, progress=False)
    counted = record["earlier_sittings"]
    # a run stopped between writing its record and deleting the ledger leaves the ledger behind
    (run_dir / LEDGER).write_text(json.dumps(counted))
    _interrupted(monkeypatch, paths, cfg, force=True)  # a forced re-run, interrupted: its own sitting is noted
    (own,) = read_ledger(run_dir)  # the stored record's were dropped (by content), the re-run's kept
    assert own not in counted
    again = run_case(cfg, paths, progress=False, force=True)
    assert again["earlier_sittings"] == [own]
    assert again["seconds"]["earlier_sittings"] == pytest.approx(own["seconds"])


def test_interrupt_is_not_replaced_by_a_damaged_ledger(real_case, monkeypatch, capsys):
    paths, cfg, run_dir = real_case

    def damage():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / LEDGER).write_text("[{")

    _interrupted(monkeypatch, paths, cfg, before=damage)  # still KeyboardInterrupt (asserted inside)
    assert "could not note this sitting" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="delete it"):  # the next sitting stops before any work
        run_case(cfg, paths, progress=False)


def test_a_sitting_stopped_while_the_case_opens_is_noted(real_case, monkeypatch):
    """E.g. Ctrl-C while its teacher trains: data and teacher seconds are part of the total too."""
    import intraq.pipeline as pipeline_mod

    paths, cfg, run_dir = real_case

    def stopped(*args, **kwargs):
        time.sleep(0.3)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_mod, "get_teacher", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_case(cfg, paths, progress=False)
    (entry,) = read_ledger(run_dir)
    assert entry["seconds"] >= 0.3
