"""Several cases' stage 2 stacked (intraq.stacking) against the same cases run alone, on the embedded digits."""

from __future__ import annotations

import json

import pytest

from intraq.config import apply_overrides
from intraq.errors import UserInputError
from intraq.pipeline import RunPaths, case_hash, run_case_record
from intraq.profiles import get_profile
from intraq.stacking import run_cases_stacked, stack_groups, stack_key
from intraq.tables import INTRAQ_BASE


@pytest.fixture
def cases(tiny_overrides):
    base = apply_overrides(get_profile("smoke"), [*tiny_overrides, "finetune.epochs=4"])
    intraq = apply_overrides(base, list(INTRAQ_BASE))
    return [apply_overrides(intraq, ["seed=0"]), apply_overrides(intraq, ["seed=1"]),
            apply_overrides(base, ["synth.method=real", "seed=0"])]


def test_stacked_cases_equal_the_cases_alone(tmp_path, cases):
    import torch

    cpu = torch.device("cpu")
    artifacts = tmp_path / "artifacts"  # one folder: the image sets are made once, then reused by both runs
    alone = [run_case_record(cfg, RunPaths(artifacts, tmp_path / "alone"), cpu, progress=False, fast="none")
             for cfg in cases]
    # a group of other membership that shares a case can never resume (its state goes); one that shares none stays
    runs = artifacts / "runs"
    for name, members in (("stack-stale", [f"{case_hash(cases[1])}-seed1", "0123abcd-seed0"]),
                          ("stack-unrelated", ["0123abcd-seed0"])):
        (runs / name).mkdir(parents=True)
        (runs / name / "members.json").write_text(json.dumps(members))
        (runs / name / "finetune-fast.pt").write_bytes(b"state")
    stacked = run_cases_stacked(cases, RunPaths(artifacts, tmp_path / "stacked"), cpu, fast="none", progress=False)
    assert [(r.case, r.seed) for r in stacked] == [(case_hash(c), c.seed) for c in cases]
    for one, many in zip(alone, stacked, strict=True):
        assert many.extras["finetune_path"]["fast"]["stacked_runs"] == 3
        assert many.seconds["stack_group_total"] >= many.seconds["total"] - 0.1  # the group began first
        assert one.extras["finetune_path"]["fast"]["stacked_runs"] == 1
        assert [h["epoch"] for h in many.history] == [h["epoch"] for h in one.history]
        for a, b in zip(many.history, one.history, strict=True):
            if "loss" in b:
                assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        for key in ("after_calibration", "final_epoch", "best_epoch"):
            assert many.accuracy[key] == pytest.approx(one.accuracy[key], abs=0.5)  # a test image or two
        assert many.extras["synthesis"].get("batches") == one.extras["synthesis"].get("batches")  # the same set
        stored = json.loads((tmp_path / "stacked" / "smoke" / f"{many.case}-seed{many.seed}.json").read_text())
        assert stored["accuracy"] == many.accuracy
    assert len({json.dumps(r.history) for r in stacked}) == 3  # three different runs
    # the group's own checkpoint and folder are gone, and the stale group's; the unrelated one is kept
    assert [p.name for p in runs.glob("stack-*")] == ["stack-unrelated"]


def test_a_stored_case_is_reused_and_the_rest_still_stack(tmp_path, cases):
    import torch

    paths = RunPaths(tmp_path / "artifacts", tmp_path / "results")
    first = run_case_record(cases[0], paths, torch.device("cpu"), progress=False, fast="none")
    records = run_cases_stacked(cases[:2], paths, torch.device("cpu"), fast="none", progress=False)
    assert records[0].finished == first.finished  # reused, not run again
    assert records[1].extras["finetune_path"]["fast"]["stacked_runs"] == 1


def test_groups_follow_the_stack_key_and_leave_interrupted_cases_alone(tmp_path, cases):
    paths = RunPaths(tmp_path / "artifacts", tmp_path / "results")
    squant = apply_overrides(cases[0], ["synth.method=squant"])
    w3 = apply_overrides(cases[1], ["quant.weight_bits=3", "quant.act_bits=3"])
    assert stack_key(squant) is None and stack_key(w3) != stack_key(cases[0]) == stack_key(cases[2])
    groups = stack_groups([cases[0], squant, w3, cases[1], cases[2]], 2, paths)
    assert groups == [[cases[0], cases[1]], [squant], [w3], [cases[2]]]
    interrupted = paths.artifacts / "runs" / f"{case_hash(cases[1])}-seed1" / "finetune.pt"
    interrupted.parent.mkdir(parents=True)
    interrupted.write_bytes(b"")
    assert stack_groups(cases, 8, paths) == [[cases[0], cases[2]], [cases[1]]]
    with pytest.raises(UserInputError, match="cannot share a stage 2"):
        run_cases_stacked([cases[0], w3], paths, None, progress=False)
    with pytest.raises(UserInputError, match="at least 1"):
        stack_groups(cases, 0, paths)


def test_stacked_campaign_runs_the_pending_cases_in_groups(tmp_path, tiny_overrides):
    from intraq.campaign import CaseSettings, plan_cases
    from intraq.campaign.plan import DONE
    from intraq.campaign.stacked import run_stacked_campaign
    from intraq.campaign.submit import CampaignOptions

    settings = CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts", tuple(tiny_overrides),
                            device="cpu", fast="none")
    only = ("comparison-real", "comparison-intraq", "comparison-squant")  # squant has no stage 2: alone
    said: list[str] = []
    report = run_stacked_campaign(settings, CampaignOptions(seeds=2, only=only), 4, said.append)
    assert [o["state"] for o in report.outcomes] == ["done"] * 6, said
    folder = settings.results / "smoke"
    stacked = {}
    for p in report.submitted:
        record = json.loads((folder / f"{p.case}-seed{p.seed}.json").read_text())
        path = record.get("finetune_path")
        stacked[(p.method, p.seed)] = path["fast"]["stacked_runs"] if isinstance(path, dict) else None
    assert stacked == {("intraq", 0): 4, ("real", 0): 4, ("intraq", 1): 4, ("real", 1): 4,
                       ("squant", 0): None, ("squant", 1): None}
    cells = {f.name for f in (folder / "cells").glob("*.json")}
    assert {"comparison--real-seed1.json", "comparison--intraq-seed0.json", "main_cifar10--w4a4-seed1.json"} <= cells
    states = {(c.name, p.seed): p.state for p in plan_cases("smoke", 2, settings.results, settings.extra)
              for c in p.cells}
    assert all(states[(name, seed)] == DONE for name in only for seed in (0, 1))
    said.clear()
    again = run_stacked_campaign(settings, CampaignOptions(seeds=2, only=only), 4, said.append)
    assert again.submitted == [] and "nothing to run" in said[-1]


def test_stacked_campaign_leaves_what_misses_the_deadline_pending_and_refuses_slurm(tmp_path, tiny_overrides):
    from intraq.campaign import CaseSettings
    from intraq.campaign.stacked import run_stacked_campaign
    from intraq.campaign.submit import CampaignOptions
    from intraq.cli import main

    settings = CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts", tuple(tiny_overrides),
                            device="cpu", fast="none", default_seconds=50.0)
    said: list[str] = []
    with pytest.raises(UserInputError, match="shorter than every pending case"):  # refused up front
        run_stacked_campaign(settings, CampaignOptions(seeds=1, only=("comparison-real",), deadline=40.0), 2)
    report = run_stacked_campaign(settings, CampaignOptions(seeds=1, only=("comparison-real",), deadline=60.0), 2,
                                  said.append)
    assert [o["state"] for o in report.outcomes] == ["done"]
    assert main(["campaign", "--profile", "smoke", "--stack", "2", "--executor", "slurm"]) == 2


def test_a_group_makes_its_intraq_sets_together_as_each_would_alone(tmp_path, cases):
    import torch

    from intraq.artifacts import load_torch

    cpu = torch.device("cpu")
    intraq = cases[:2]  # seeds 0 and 1 of one IntraQ cell: one synthesis setting
    alone = [run_case_record(cfg, RunPaths(tmp_path / "a1", tmp_path / "r1"), cpu, progress=False, fast="none")
             for cfg in intraq]
    together = run_cases_stacked(intraq, RunPaths(tmp_path / "a2", tmp_path / "r2"), cpu, fast="none",
                                 progress=False)
    assert len(list((tmp_path / "a2" / "synthesis").glob("*/batch*.pt"))) == 4  # 2 seeds x 2 batches of 32
    for one, both in zip(alone, together, strict=True):
        assert both.extras["synthesis"]["reused_batches"] == 2  # made by the group, found by the case
        for a, b in zip(one.extras["synthesis"]["batches"], both.extras["synthesis"]["batches"], strict=True):
            assert b["stacked_runs"] == 2 and a["stacked_runs"] == 1
            assert b["final_total"] == pytest.approx(a["final_total"], rel=1e-4)
        for a, b in zip(one.history, both.history, strict=True):
            if "loss" in a:
                assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    for a_path in sorted((tmp_path / "a1" / "synthesis").glob("*/batch*.pt")):
        b_path = tmp_path / "a2" / "synthesis" / a_path.parent.name / a_path.name
        a, b = load_torch(a_path), load_torch(b_path)
        assert torch.equal(a["labels"], b["labels"])
        diff = (a["images"] - b["images"]).abs()
        assert float(diff.max()) < 5e-2 and float(diff.mean()) < 1e-4  # float rounding, a few flat pixels aside


def test_an_interrupted_group_counts_its_sitting_in_every_record(tmp_path, cases, monkeypatch):
    import time

    import torch

    import intraq.stacking as stacking_mod
    from intraq.sitting_wall import LEDGER, read_ledger

    paths = RunPaths(tmp_path / "artifacts", tmp_path / "results")
    original = stacking_mod._stage2_together

    def interrupted(*args, **kwargs):
        time.sleep(0.5)
        raise KeyboardInterrupt

    monkeypatch.setattr(stacking_mod, "_stage2_together", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_cases_stacked(cases[:2], paths, torch.device("cpu"), fast="none", progress=False)
    monkeypatch.setattr(stacking_mod, "_stage2_together", original)
    run_dirs = [paths.artifacts / "runs" / f"{case_hash(c)}-seed{c.seed}" for c in cases[:2]]
    noted = [read_ledger(d) for d in run_dirs]
    assert all(len(n) == 1 and n[0]["seconds"] >= 0.5 for n in noted)
    records = run_cases_stacked(cases[:2], paths, torch.device("cpu"), fast="none", progress=False)
    for record, (entry,) in zip(records, noted, strict=True):
        assert record.seconds["earlier_sittings"] == pytest.approx(entry["seconds"])
        assert record.extras["earlier_sittings"] == [entry]
        assert record.seconds["total"] == pytest.approx(record.seconds["this_sitting"] + entry["seconds"])
    assert records[0].seconds["stack_group_total"] >= records[0].seconds["total"] - 0.1
    assert not any((d / LEDGER).exists() for d in run_dirs)
