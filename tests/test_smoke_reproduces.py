"""Numbers do not move: a committed smoke record re-runs to the same accuracies, bit for bit.

Exact equality needs the same teacher weights, CPU model, torch version and thread count (floating-point
reductions differ otherwise, README "Reproducing a record exactly"); elsewhere the comparison is skipped and
says why.
"""

import json
from pathlib import Path

import pytest
import torch

from intraq.config import RunConfig, from_dict
from intraq.data import build_data
from intraq.pipeline import RunPaths, run_case
from intraq.results import machine_info
from intraq.teacher.load import get_teacher

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("after_calibration", "final_epoch", "best_epoch", "best_epoch_index", "teacher")


def _fastest_record(method: str) -> dict:
    records = [json.loads(p.read_text()) for p in sorted((ROOT / "results" / "smoke").glob("*-seed*.json"))]
    return min((r for r in records if r["method"] == method), key=lambda r: r["seconds"]["total"])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("reproduce-artifacts")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["squant", "intraq"])
def test_a_committed_smoke_record_reproduces_exactly(artifacts, tmp_path, method):
    stored = _fastest_record(method)
    machine = stored["machine"]
    if machine.get("device") != "cpu" or machine.get("torch_threads") != torch.get_num_threads():
        pytest.skip(f"record made on {machine.get('device')} with {machine.get('torch_threads')} threads")
    here = machine_info("cpu")
    keys = ("cpu_model", "torch", *(("cpu_capability",) if "cpu_capability" in machine else ()))
    if any(machine.get(k) != here[k] for k in keys):
        pytest.skip(f"record made on {[machine.get(k) for k in keys]}, this is {[here[k] for k in keys]} ({keys}): "
                    "float results may differ")
    cfg = from_dict(RunConfig, stored["config"])
    device = torch.device("cpu")
    teacher = get_teacher(cfg.teacher, build_data(cfg.data), device, artifacts, progress=False)
    if teacher.info.get("sha256") != stored["teacher"]["sha256"]:
        pytest.skip(
            f"the smoke teacher trained here has sha256 {teacher.info.get('sha256', '?')[:12]}, the record's "
            f"{stored['teacher']['sha256'][:12]}: its numbers cannot match bit for bit on this machine"
        )
    fresh = run_case(cfg, RunPaths(artifacts=artifacts, results=tmp_path), device, progress=False)
    assert fresh["case"] == stored["case"]
    assert {k: fresh["accuracy"][k] for k in KEYS} == {k: stored["accuracy"][k] for k in KEYS}
