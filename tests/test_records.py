"""Run records: one `RunRecord` type, committed records load and keep their case hashes, bad files are named."""

import dataclasses
import json
from pathlib import Path

import pytest

from intraq.config import RunConfig, apply_overrides, config_hash, from_dict
from intraq.errors import UserInputError
from intraq.pipeline import case_hash, synthetic_set_hash
from intraq.profiles import get_profile
from intraq.results import RunRecord, read_result
from intraq.synthesis.intraq import effective_synth_settings
from intraq.tables import all_tables, cell_config

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(
    p for folder in ("smoke", "cifar10-cpu", "diagnostics/cifar10-cpu-lr1e-4", "diagnostics/cpu-vs-gpu")
    for p in (ROOT / "results" / folder).glob("*.json")
)
# made at commit e8488d4; the `cifar10` entries re-pinned when that profile took its 160-epoch teacher (tenth
# session): a teacher's checkpoint and recipe are part of every case, and `cifar10-cpu` kept the old teacher
PINS = json.loads((Path(__file__).parent / "data" / "hash_pins.json").read_text())


def test_there_are_committed_records():
    assert len([p for p in COMMITTED if p.parent.name == "smoke"]) >= 39


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_records_load_round_trip_and_keep_their_case_hash(path):
    raw = json.loads(path.read_text())
    record = read_result(path)
    assert record.to_dict() == raw  # same field names and values: the JSON stays compatible
    if path.parent.parent.name == "results":  # a profile's own records: the name is the case hash
        assert case_hash(from_dict(RunConfig, record.config)) == record.case == path.name.split("-seed")[0]


@pytest.mark.parametrize("profile", ["smoke", "cifar10", "cifar10-cpu"])
def test_table_cells_keep_their_case_hashes(profile):
    """Every cell pinned at e8488d4 keeps its case hash (rows added since get their own, new names)."""
    got = {f"{t.key}--{c.key}": case_hash(cell_config(c, profile, 0)) for t in all_tables() for c in t.cells}
    pinned = PINS[f"cells|{profile}"]
    assert {key: got.get(key) for key in pinned} == pinned


def test_cifar10_shared_intraq_cell_hash():
    cell = next(c for t in all_tables() if t.key == "comparison" for c in t.cells if c.key == "intraq")
    assert case_hash(cell_config(cell, "cifar10", 0)) == "35d3add9b275"  # 358f99e19640 with the 86.90% teacher
    assert case_hash(cell_config(cell, "cifar10-cpu", 0)) == "d614c6595086"


@pytest.mark.parametrize("key", [k for k in PINS if not k.startswith("cells|")])
def test_case_set_and_synthesis_cache_hashes_are_unchanged(key):
    profile, method, extra = key.split("|")
    cfg = apply_overrides(get_profile(profile), [f"synth.method={method}", *[e for e in extra.split(",") if e]])
    pin = PINS[key]
    assert case_hash(cfg) == pin["case"]
    assert synthetic_set_hash(cfg, "abc123") == pin["set"]
    if "effective" in pin:  # the settings part of the batch folders' cache key
        assert config_hash(effective_synth_settings(cfg, cfg.data.name).to_dict()) == pin["effective"]


def _record(path: Path, **changes) -> Path:
    blob = json.loads(next(p for p in COMMITTED if p.parent.name == "smoke").read_text())
    for key, value in changes.items():
        if key.startswith("accuracy."):
            blob["accuracy"][key.split(".", 1)[1]] = value
        elif value is None:
            blob.pop(key)
        else:
            blob[key] = value
    path.write_text(json.dumps(blob))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"accuracy.best_epoch": 150.0}, "accuracy.best_epoch=150.0 is not a top-1 in 0..100"),
        ({"accuracy.final_epoch": -1}, "accuracy.final_epoch=-1"),
        ({"accuracy.best_epoch_index": "3"}, "not an epoch index"),
        ({"case": None}, "missing case"),
        ({"accuracy": {"final_epoch": 50.0}}, "accuracy.after_calibration missing"),
        ({"seed": "0"}, "seed='0' is not an integer"),
    ],
)
def test_a_bad_record_names_its_file(tmp_path, changes, message):
    path = _record(tmp_path / "bad-seed0.json", **changes)
    with pytest.raises(UserInputError) as caught:
        read_result(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_invalid_json_names_its_file(tmp_path):
    path = tmp_path / "broken-seed0.json"
    path.write_text('{"case": ')
    with pytest.raises(UserInputError, match="broken-seed0.json"):
        read_result(path)


def test_none_accuracies_are_allowed_and_extras_are_kept(tmp_path):
    path = _record(tmp_path / "ok-seed0.json", **{"accuracy.after_calibration": None})
    record = read_result(path)
    assert record.accuracy["after_calibration"] is None
    assert "history" in record.to_dict() and record.extras  # method fields such as `synthesis` survive


def test_report_names_a_bad_cell_file(tmp_path):
    from intraq.report.load import load_results

    cells = tmp_path / "smoke" / "cells"
    cells.mkdir(parents=True)
    source = next((ROOT / "results" / "smoke" / "cells").glob("*.json"))
    blob = json.loads(source.read_text())
    blob["accuracy"]["best_epoch"] = 150.0
    (cells / source.name).write_text(json.dumps(blob))
    with pytest.raises(UserInputError, match=f"{source.name}.*best_epoch=150.0"):
        load_results(tmp_path, "smoke")


def test_from_dict_rejects_what_is_not_a_record():
    with pytest.raises(UserInputError, match="x.json: not a run record"):
        RunRecord.from_dict([1, 2], source="x.json")
    good = RunRecord.from_dict(json.loads(COMMITTED[0].read_text()))
    with pytest.raises(ValueError, match="accuracy.best_epoch=101"):  # the pipeline cannot write one either
        dataclasses.replace(good, accuracy=dict(good.accuracy, best_epoch=101))
