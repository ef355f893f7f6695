"""Result records: the numbers of one case plus everything needed to trace them (config, seed, commit, machine)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from intraq.artifacts import load_json, save_json
from intraq.errors import UserInputError

OUTPUT_FOLDERS = ("results", "reports", "resume")  # written by runs, `intraq report` and long runs' state; not code
RESULTS_ENV = "INTRAQ_RESULTS"
PUBLISHED_RESULTS = Path("results")  # committed records: written only with --publish
PUBLISHED_REPORTS = Path("reports")
LOCAL_FOLDER = "local"  # results/local/, reports/local/: a user's own runs (gitignored)


def default_results_dir(publish: bool) -> Path:
    """Where runs write and reports read: $INTRAQ_RESULTS if set, else the committed `results/` when publishing,
    else `results/local/`, so a user's runs never overwrite (or get served from) the published records."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    return PUBLISHED_RESULTS if publish else PUBLISHED_RESULTS / LOCAL_FOLDER


def default_reports_dir(publish: bool) -> Path:
    """Where `intraq report` writes: the committed `reports/` when publishing, else `reports/local/` (gitignored)."""
    return PUBLISHED_REPORTS if publish else PUBLISHED_REPORTS / LOCAL_FOLDER


def git_commit(repo: Path | None = None) -> str:
    """The current commit, with '+dirty' when the working tree has uncommitted changes to tracked files outside
    OUTPUT_FOLDERS (runs and `intraq report` write there, e.g. a committed cell file after a table's text changed;
    such output changes must not mark the next run's code as dirty).

    $INTRAQ_GIT_COMMIT, when set, wins: a sender that copies a clean tree of that commit to another machine sets
    it, because the copy may carry no `.git` or a stale one (seen on a lent GPU machine). Else 'unknown' outside
    git."""
    if os.environ.get("INTRAQ_GIT_COMMIT"):
        return os.environ["INTRAQ_GIT_COMMIT"]
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
             *(f":(top,exclude){folder}" for folder in OUTPUT_FOLDERS)],
            cwd=cwd, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (float results can differ between CPUs of one architecture: AVX2 vs AVX-512)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str | None:
    """The vector instruction set torch's CPU kernels dispatch to ("AVX512", "AVX2", ...): the same "AMD EPYC"
    model name has come with and without AVX-512 on this project's machines, at 3x the speed and with other float
    rounding, so a record names it."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def sitting(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where and when one stretch of a long run ran: a run resumed on another machine (or after a code change)
    lists one of these per stretch, so its record says which parts ran where."""
    info = machine_info(device)
    keep = ("hostname", "processor", "cpu_capability", "torch", "torch_threads", "device", "gpu")
    return {**{k: info[k] for k in keep if k in info}, "git_commit": git_commit(), "started": now_utc()}


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def result_path(results_dir: Path, profile: str, case_hash: str, seed: int) -> Path:
    return results_dir / profile / f"{case_hash}-seed{seed}.json"


def cells_dir(results: Path, profile: str) -> Path:
    """Where the bench's cell files of a profile go (one per table cell and seed, naming its record)."""
    return Path(results) / profile / "cells"


def figures_dir(results: Path, profile: str) -> Path:
    return Path(results) / profile / "figures-data"


def figure_file(results: Path, profile: str, case: str, seed: int) -> Path:
    """A record's figure data (images and teacher features of a cell with figures)."""
    return figures_dir(results, profile) / f"{case}-seed{seed}.npz"


ACCURACY_KEYS = ("after_calibration", "final_epoch", "best_epoch", "teacher")  # test top-1 in %, or None
ACCURACY_NOTES = {
    "after_calibration": "quantized network after activation-range calibration only (PTQ starting point)",
    "final_epoch": "after the last fine-tuning epoch",
    "best_epoch": "best test top-1 over evaluated epochs incl. calibration epochs (test-set selection, T12)",
}


def accuracy_problems(accuracy: Any) -> list[str]:
    """Why an `accuracy` block is not one a run can have written: missing keys, values outside 0..100."""
    if not isinstance(accuracy, dict):
        return [f"accuracy is {type(accuracy).__name__}, not an object"]
    problems = [f"accuracy.{key} missing" for key in ACCURACY_KEYS if key not in accuracy]
    for key, value in accuracy.items():
        if key in ("best_epoch_index", "diverged_at_epoch", "exploded_at_epoch"):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                problems.append(f"accuracy.{key}={value!r} is not an epoch index")
        elif value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 100.0
        ):
            problems.append(f"accuracy.{key}={value!r} is not a top-1 in 0..100")
    return problems


@dataclass
class RunRecord:
    """One run of one case (a config hash and seed): its numbers and everything needed to trace them.

    Written by `intraq.pipeline.run_case` as `<results>/<profile>/<case>-seed<N>.json`; `from_dict` checks a
    stored one (required fields, every accuracy in 0..100 or None) and names the file when it is not. Fields
    a method adds (`synthesis`, `quantization`, `squant`, `note`, ...) are kept in `extras` under their names.
    """

    case: str
    seed: int
    profile: str
    method: str
    accuracy: dict[str, Any]  # ACCURACY_KEYS (in %), best_epoch_index, diverged_at_epoch, exploded_at_epoch
    teacher: dict[str, Any]  # what the teacher is: name, source, sha256 or weights, test_top1
    config: dict[str, Any]
    seconds: dict[str, float]
    git_commit: str
    machine: dict[str, Any]
    accuracy_notes: dict[str, str] = field(default_factory=lambda: dict(ACCURACY_NOTES))
    relevant_config: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    run_id: str | None = None  # unique per run: two runs can start in the same second (records before it: none)
    intraq_bench_version: str | None = None
    command: str | None = None
    git_commit_note: str | None = None  # a later explanation of the commit (e.g. why it reads +dirty)
    data_identity: str | None = None  # the data's name + content hash (records before it existed have none)
    history: list[dict[str, Any]] | None = None  # per evaluated epoch
    extras: dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("case", "seed", "profile", "method", "accuracy", "teacher", "config", "seconds", "git_commit",
                "machine")

    def __post_init__(self) -> None:
        problems = accuracy_problems(self.accuracy)
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "record") -> RunRecord:
        """A checked record from its JSON object; a bad one is a `UserInputError` naming `source`."""
        if not isinstance(data, dict):
            raise UserInputError(f"{source}: not a run record (a JSON object is expected)")
        missing = [key for key in cls.REQUIRED if key not in data]
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += accuracy_problems(data.get("accuracy", {}))
        if not isinstance(data.get("seed", 0), int) or isinstance(data.get("seed"), bool):
            problems.append(f"seed={data.get('seed')!r} is not an integer")
        if problems:
            raise UserInputError(f"{source}: not a valid run record: {'; '.join(problems)}")
        known = {f.name for f in fields(cls)} - {"extras"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extras={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, with the field names of every record written so far (extras at the top level)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
        for optional in ("git_commit_note", "history", "data_identity", "run_id"):
            if out[optional] is None:
                del out[optional]
        return {**out, **self.extras}


def write_result(record: RunRecord | dict[str, Any], path: Path) -> Path:
    return save_json(record.to_dict() if isinstance(record, RunRecord) else record, path)


def read_result(path: Path) -> RunRecord:
    """The checked run record at `path`; invalid JSON or a bad record is a `UserInputError` naming the file."""
    return RunRecord.from_dict(load_json(path), source=path)


CELL_REQUIRED = ("table", "cell", "seed", "case", "accuracy")


def read_cell_record(path: Path) -> dict[str, Any]:
    """A table cell file (`intraq.report.collect.write_cell_record`), checked like a run record's numbers."""
    blob = load_json(path)
    if not isinstance(blob, dict):
        raise UserInputError(f"{path}: not a cell record (a JSON object is expected)")
    missing = [key for key in CELL_REQUIRED if key not in blob]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += accuracy_problems(blob.get("accuracy", {}))
    if problems:
        raise UserInputError(f"{path}: not a valid cell record: {'; '.join(problems)}")
    return blob
