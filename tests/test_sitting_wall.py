"""A case that outlives a sitting: its record's `seconds.total` counts the sittings that stopped before it."""

from __future__ import annotations

import time

import pytest

import intraq.finetune.trainer as trainer_mod
from intraq.config import apply_overrides
from intraq.errors import UserInputError
from intraq.pipeline import RunPaths, case_hash, run_case
from intraq.profiles import get_profile
from intraq.sitting_wall import LEDGER, drop_before, earlier_seconds, note_sitting, sittings


def test_ledger_adds_up_and_forgets_what_a_stored_record_already_counted(tmp_path):
    run_dir = tmp_path / "runs" / "abc-seed0"
    assert sittings(run_dir) == [] and earlier_seconds(run_dir) == 0.0
    note_sitting(run_dir, "2026-11-30T07:00:00+00:00", 100.0)
    note_sitting(run_dir, "2026-11-30T09:00:00+00:00", 20.5)
    assert earlier_seconds(run_dir) == 120.5
    drop_before(run_dir, "2026-11-30T08:00:00+00:00")  # a record finished at 8: the 7 o'clock sitting was its own
    assert [e["started"] for e in sittings(run_dir)] == ["2026-11-30T09:00:00+00:00"]
    drop_before(run_dir, "2026-11-30T10:00:00+00:00")
    assert not (run_dir / LEDGER).exists()


def test_a_corrupt_ledger_names_the_fix(tmp_path):
    (tmp_path / LEDGER).write_text('{"seconds": 3}')
    with pytest.raises(UserInputError, match="delete it"):
        earlier_seconds(tmp_path)


def test_resumed_case_counts_the_interrupted_sitting(tmp_path, monkeypatch, tiny_overrides):
    paths = RunPaths(artifacts=tmp_path / "artifacts", results=tmp_path / "results")
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=real"])
    run_dir = paths.artifacts / "runs" / f"{case_hash(cfg)}-seed0"
    original, calls = trainer_mod.kd_backward, {"n": 0}

    def slow_then_interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in the second KD epoch (4 steps each), after one checkpointed epoch
            time.sleep(1.0)  # the first sitting's wall must show in the resumed total
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "kd_backward", slow_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_case(cfg, paths, progress=False)
    monkeypatch.setattr(trainer_mod, "kd_backward", original)
    (first,) = sittings(run_dir)
    assert first["seconds"] >= 1.0

    record = run_case(cfg, paths, progress=False)
    seconds = record["seconds"]
    assert seconds["earlier_sittings"] == pytest.approx(first["seconds"])
    assert seconds["total"] == pytest.approx(seconds["this_sitting"] + first["seconds"])
    assert len(record["finetune_sittings"]) == 2  # it did resume from the checkpoint
    assert not (run_dir / LEDGER).exists()  # counted once: gone with the checkpoints

    # A forced re-run from scratch starts a new count (the stored record's sittings are not carried over).
    note_sitting(run_dir, "2000-01-01T00:00:00+00:00", 999.0)  # as if left behind by the stored record's run
    again = run_case(cfg, paths, progress=False, force=True)
    assert "earlier_sittings" not in again["seconds"] and again["seconds"]["total"] < 999.0
