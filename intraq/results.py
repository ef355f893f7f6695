"""Result records: the numbers of one case plus everything needed to trace them (config, seed, commit, machine)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from intraq.artifacts import load_json, save_json

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


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
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
    keep = ("hostname", "processor", "torch", "torch_threads", "device", "gpu")
    return {**{k: info[k] for k in keep if k in info}, "git_commit": git_commit(), "started": now_utc()}


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def result_path(results_dir: Path, profile: str, case_hash: str, seed: int) -> Path:
    return results_dir / profile / f"{case_hash}-seed{seed}.json"


def write_result(record: dict[str, Any], path: Path) -> Path:
    return save_json(record, path)


def read_result(path: Path) -> dict[str, Any]:
    return load_json(path)
