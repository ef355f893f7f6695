"""The authors' own stage 2 beside a diverged run: records of `bench/official_stage2.py` on the same inputs.

When one of our stage-2 runs diverges, the first question a reviewer asks is whether the official code would too.
`bench/official_stage2.py` runs the official IntraQ trainer on a run's teacher and synthetic batches and writes its
record to `<results>/diagnostics/official-stage2/`; the report's header states, for each diverged run, what the
official trainer did on the same teacher (by weights' identity) and the same images (by set folder).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from intraq.errors import UserInputError
from intraq.image_sets import teacher_identity
from intraq.results import RunRecord, read_result

OFFICIAL_STAGE2_DIR = Path("diagnostics") / "official-stage2"


def diagnostic_records(folder: Path, accept: Callable[[dict[str, Any]], bool]) -> list[tuple[Path, dict[str, Any]]]:
    """The JSON records in `folder` that `accept` takes; unreadable ones are skipped (a report never fails for a
    diagnostic it cannot read)."""
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            blob = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(blob, dict) and accept(blob):
            out.append((path, blob))
    return out


def _official_records(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    return diagnostic_records(results / OFFICIAL_STAGE2_DIR,
                              lambda blob: bool(blob.get("images") and blob.get("teacher_id") and blob.get("epochs")))


def read_run(results: Path, profile: str, result_file: str) -> RunRecord | None:
    """A run record named by a cell file, or None when it is missing or unreadable (the report names a bad run
    record elsewhere)."""
    path = results / profile / result_file
    if not path.is_file():
        return None
    try:
        return read_result(path)
    except UserInputError:
        return None


def record_inputs(record: RunRecord) -> tuple[str, str] | None:
    """(image set folder name, teacher identity) of a run, or None when it has no synthetic set."""
    folder = (record.extras.get("synthesis") or {}).get("cache_dir")
    teacher = teacher_identity(record.teacher)
    return (Path(folder).name, teacher) if folder and teacher else None


def diverged_inputs(
    results: Path, profile: str, diverged: list[tuple[str, int, str]]
) -> Iterator[tuple[str, int, RunRecord, tuple[str, str]]]:
    """(label, seed, run record, its inputs) of each diverged run (label, seed, result file) whose record names
    a synthetic set and a teacher: what a diagnostic on the same inputs is matched by."""
    for label, seed, result_file in diverged:
        record = read_run(results, profile, result_file)
        inputs = record_inputs(record) if record else None
        if inputs is not None:
            yield label, seed, record, inputs


def shown_path(results: Path, path: Path) -> str:
    """A diagnostic's path as the report shows it: results/diagnostics/..."""
    return (Path(results.name) / path.relative_to(results)).as_posix()


def describe_official_run(blob: dict[str, Any]) -> str:
    """What the official trainer did: calibration result, then trained (best) or diverged (where)."""
    steps = blob.get("steps") or []
    bad = next((s for s in steps if not math.isfinite(float(s.get("loss", math.nan)))), None)
    epochs = blob["epochs"]
    calibration = [e for e in epochs if e.get("last_loss") is None]
    text = f"after calibration {calibration[-1]['test_top1']:.2f}%, " if calibration else ""
    commit = (blob.get("official_commit") or "?")[:7]
    who = f"the authors' trainer ({blob.get('official_repo', 'official')}@{commit})"
    if bad is not None:
        return (f"{who} diverged too: {text}non-finite loss at fine-tuning step {bad['step']} (epoch {bad['epoch']}), "
                f"{epochs[-1]['test_top1']:.2f}% after it")
    best = max(epochs, key=lambda e: e["test_top1"])
    return (f"{who} trained: {text}best {best['test_top1']:.2f}% at epoch {best['epoch']} of the {len(epochs)} it "
            "ran")


def official_beside_diverged(results: Path, profile: str, diverged: list[tuple[str, int, str]]) -> list[str]:
    """Per diverged run (label, seed, result file) with an official-trainer record on its inputs, one sentence."""
    records = _official_records(results)
    if not records:
        return []
    out = []
    for label, seed, _, inputs in diverged_inputs(results, profile, diverged):
        for path, blob in records:
            if (Path(blob["images"]).name, blob["teacher_id"]) == inputs:
                out.append(f"{label} seed {seed}: on the same teacher and images, {describe_official_run(blob)} "
                           f"(`{shown_path(results, path)}`, `bench/official_stage2.py`)")
    return out
