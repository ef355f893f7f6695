"""`--same-machine`: a stored record of another machine class is run again here and the old one kept aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intraq.campaign import CaseSettings, plan_cases, run_cell
from intraq.campaign.plan import DONE, PENDING
from intraq.campaign.submit import CampaignOptions, launch_campaign
from intraq.claims import machine_class
from intraq.errors import UserInputError
from intraq.reuse import OTHER_MACHINES, class_folder_name, keep_displaced, reusable, this_machine_class
from intraq.tables import get_table

ELSEWHERE = {"device": "cuda:0", "gpu": "Imagined GPU 9000", "torch": "9.9.9"}


def _move_to_another_machine(record_file: Path) -> dict:
    blob = json.loads(record_file.read_text())
    blob["machine"] = {**blob["machine"], **ELSEWHERE}
    record_file.write_text(json.dumps(blob))
    return blob


def test_reusable_counts_only_this_class_when_asked(tmp_path: Path) -> None:
    here = this_machine_class("cpu")
    record = tmp_path / "abc-seed0.json"
    assert not reusable(record, None) and not reusable(record, here)  # absent
    record.write_text(json.dumps({"machine": {"device": "cpu", "torch": "x"}}))
    assert reusable(record, None)
    assert reusable(record, machine_class({"device": "cpu", "torch": "x"}))
    assert not reusable(record, here)
    record.write_text("{not json")
    assert reusable(record, here)  # unreadable: counted done, its run refuses it with the fix (never rerun blindly)
    assert class_folder_name("NVIDIA H200, torch 2.11.0+cu130") == "nvidia-h200-torch-2.11.0-cu130"


def test_keep_displaced_never_overwrites_another_copy(tmp_path: Path) -> None:
    record, figures = tmp_path / "p" / "abc-seed0.json", tmp_path / "p" / "figures-data" / "abc-seed0.npz"
    figures.parent.mkdir(parents=True)
    record.write_text(json.dumps({"n": 1}))
    figures.write_bytes(b"npz")
    first = keep_displaced(record, "GPU A, torch 1", [figures])
    assert first == tmp_path / "p" / OTHER_MACHINES / "gpu-a-torch-1" / "abc-seed0.json"
    assert json.loads(first.read_text()) == {"n": 1} and record.exists()  # a copy: the record stays until replaced
    assert not figures.exists() and first.with_name("abc-seed0-figures-data.npz").read_bytes() == b"npz"
    assert keep_displaced(record, "GPU A, torch 1") == first  # the same record again: same copy
    record.write_text(json.dumps({"n": 2}))
    second = keep_displaced(record, "GPU A, torch 1")
    assert second.name == "abc-seed0-2.json" and json.loads(first.read_text()) == {"n": 1}


@pytest.mark.slow
def test_same_machine_reruns_a_record_of_another_class_and_keeps_it(tmp_path: Path, tiny_overrides) -> None:
    settings = CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts", tuple(tiny_overrides))
    cell = get_table("comparison").cell("squant")
    first = run_cell(cell, 0, settings)
    record_file = settings.results / "smoke" / f"{first.record['case']}-seed0.json"
    elsewhere = _move_to_another_machine(record_file)
    planned = {p.case: p for p in plan_cases("smoke", 1, settings.results, settings.extra)}
    assert planned[first.record["case"]].state == DONE  # by default any class counts
    assert run_cell(cell, 0, settings).reused
    here = this_machine_class("cpu")
    planned = {p.case: p for p in plan_cases("smoke", 1, settings.results, settings.extra, machine=here)}
    assert planned[first.record["case"]].state == PENDING

    same = CaseSettings(**{**settings.__dict__, "same_machine": True})
    again = run_cell(cell, 0, same)
    assert not again.reused and machine_class(again.record["machine"]) == here
    assert again.record["run_id"] != elsewhere["run_id"]  # a new run (both may have started in one second)
    kept = settings.results / "smoke" / OTHER_MACHINES / class_folder_name(machine_class(ELSEWHERE))
    assert json.loads((kept / record_file.name).read_text()) == elsewhere
    cell_file = json.loads((settings.results / "smoke" / "cells" / "comparison--squant-seed0.json").read_text())
    assert cell_file["machine"] == again.record["machine"]  # the cell now points at this class's run
    assert run_cell(cell, 0, same).reused  # this class's record is reused from now on
    planned = {p.case: p for p in plan_cases("smoke", 1, settings.results, settings.extra, machine=here)}
    assert planned[first.record["case"]].state == DONE


def test_same_machine_is_refused_with_slurm(tmp_path: Path) -> None:
    settings = CaseSettings("smoke", tmp_path / "results", same_machine=True)
    with pytest.raises(UserInputError, match="inside one job"):
        launch_campaign(settings, CampaignOptions(executor="slurm", seeds=1))


def test_the_option_is_on_run_and_campaign(capsys) -> None:
    from intraq.cli import main

    assert main(["run", "--profile", "smoke", "--same-machine", "--print-config"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(["campaign", "--help"])
    assert ended.value.code == 0 and "--same-machine" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_same_machine_reruns_the_cell_of_another_class(tmp_path: Path, tiny_overrides) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    settings = CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts", tuple(tiny_overrides))
    first = run_cell(get_table("comparison").cell("squant"), 0, settings)
    record_file = settings.results / "smoke" / f"{first.record['case']}-seed0.json"
    _move_to_another_machine(record_file)
    sets = [arg for o in tiny_overrides for arg in ("--set", o)]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", str(repo / "bench" / "test_tables.py"), "-q", "-p", "no:cacheprovider",
         "--profile", "smoke", "--seeds", "1", "--results", str(settings.results), "--artifacts",
         str(settings.artifacts), "--device", "cpu", "-k", "comparison-squant-", "--same-machine", *sets],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
        cwd=tmp_path, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert machine_class(json.loads(record_file.read_text())["machine"]) == this_machine_class("cpu")
    assert list((settings.results / "smoke" / OTHER_MACHINES).rglob(record_file.name))


@pytest.mark.slow
def test_figure_data_follows_the_record_it_was_made_with(tmp_path: Path, tiny_overrides) -> None:
    """A figures cell re-run on this class: the old figure data goes with the old record, the new run's is
    stamped with its record, and a report leaves out figure data of another run than the record's."""
    from intraq.report.load import load_figure_data, load_results
    from intraq.results import figure_file

    settings = CaseSettings("smoke", tmp_path / "results", tmp_path / "artifacts", tuple(tiny_overrides))
    cell = get_table("mdc_vs_adi").cell("mdc")
    first = run_cell(cell, 0, settings)
    case = first.record["case"]
    assert run_cell(get_table("main_cifar10").cell("w4a4"), 0, settings).reused  # the shared cell: same case
    figures = figure_file(settings.results, "smoke", case, 0)
    assert load_figure_data(figures).meta["record_run_id"] == first.record["run_id"]
    _move_to_another_machine(settings.results / "smoke" / f"{case}-seed0.json")
    again = run_cell(cell, 0, CaseSettings(**{**settings.__dict__, "same_machine": True}))
    assert not again.reused and load_figure_data(figures).meta["record_run_id"] == again.record["run_id"]
    other_table = json.loads((settings.results / "smoke" / "cells" / "main_cifar10--w4a4-seed0.json").read_text())
    assert other_table["seconds"] == again.record["seconds"]  # the new run, though that cell was not run by name
    [kept] = (settings.results / "smoke" / OTHER_MACHINES).rglob("*-figures-data.npz")
    assert load_figure_data(kept).meta["record_run_id"] == first.record["run_id"]
    assert f"{case}-seed0" in load_results(settings.results, "smoke").figures
    figures.write_bytes(kept.read_bytes())  # the old run's figure data beside the new record: left out
    assert f"{case}-seed0" not in load_results(settings.results, "smoke").figures


@pytest.mark.slow
def test_force_with_same_machine_still_keeps_the_other_record(tmp_path: Path, tiny_overrides) -> None:
    from intraq.config import apply_overrides
    from intraq.pipeline import RunPaths, run_case
    from intraq.profiles import get_profile

    cfg = apply_overrides(get_profile("smoke"), ["synth.method=squant", *tiny_overrides])
    paths = RunPaths(tmp_path / "artifacts", tmp_path / "results")
    first = run_case(cfg, paths, progress=False)
    record_file = tmp_path / "results" / "smoke" / f"{first['case']}-seed0.json"
    elsewhere = _move_to_another_machine(record_file)
    run_case(cfg, paths, progress=False, force=True, same_machine=True)
    [kept] = (tmp_path / "results" / "smoke" / OTHER_MACHINES).rglob(record_file.name)
    assert json.loads(kept.read_text()) == elsewhere


def test_campaign_selection_counts_only_this_class_with_same_machine(tmp_path: Path) -> None:
    from intraq.campaign.submit import plan_selection

    settings = CaseSettings("smoke", tmp_path / "results", same_machine=False)
    options = CampaignOptions(executor="local", seeds=1, only=("comparison-squant",))
    [planned] = plan_selection(settings, options, "cpu", lambda _: None)[0]
    record = settings.results / "smoke" / f"{planned.case}-seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"machine": ELSEWHERE, "seconds": {"total": 1.0}, "accuracy": {}}))
    assert plan_selection(settings, options, "cpu", lambda _: None)[0] == []  # done, by any class
    same = CaseSettings("smoke", settings.results, same_machine=True)
    assert [p.case for p in plan_selection(same, options, "cpu", lambda _: None)[0]] == [planned.case]


def test_status_shows_a_record_of_another_class_as_pending_with_same_machine(tmp_path: Path, capsys) -> None:
    from intraq.cli import main

    results = tmp_path / "results"
    [planned] = [p for p in plan_cases("smoke", 1, results) if any(c.name == "comparison-squant" for c in p.cells)]
    record = results / "smoke" / f"{planned.case}-seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"machine": ELSEWHERE, "seconds": {"total": 1.0}, "accuracy": {"best_epoch": 50.0}}))

    def squant_row(*extra: str) -> str:
        assert main(["status", "--profile", "smoke", "--seeds", "1", "--results", str(results), *extra]) == 0
        return next(line for line in capsys.readouterr().out.splitlines() if planned.case in line)

    assert "done 50.00" in squant_row()
    assert "pending" in squant_row("--same-machine", "--device", "cpu")


@pytest.mark.parametrize(("stamp", "record", "shown"), [
    ({"record_started": "T", "record_run_id": "a"}, {"started": "T", "run_id": "a"}, True),
    ({"record_started": "T", "record_run_id": "a"}, {"started": "T", "run_id": "b"}, False),  # same second
    ({"record_started": "T"}, {"started": "T", "run_id": "b"}, True),  # figure data made before run ids
    ({"record_started": "T"}, {"started": "U", "run_id": "b"}, False),
    ({"record_started": "T", "record_run_id": "a"}, {"started": "U"}, False),  # a record made before run ids
    ({}, {"started": "U", "run_id": "b"}, True),  # unstamped figure data is kept
])
def test_figure_data_of_another_run_is_told_apart_even_within_one_second(tmp_path: Path, stamp, record,
                                                                          shown) -> None:
    from intraq.report.load import FigureData, _figure_of_current_run

    (tmp_path / "abc-seed0.json").write_text(json.dumps(record))
    data = FigureData(case="abc", seed=0, meta=stamp, grid_images=None, grid_labels=None, features=None,
                      feature_labels=None, diversity=0.0)
    assert _figure_of_current_run(data, tmp_path) is shown
