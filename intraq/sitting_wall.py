"""Wall seconds a case spent in earlier sittings, so that a resumed case's record counts all of them.

A case can outlive a sitting (Ctrl-C, SIGTERM before a Slurm limit, a session's end): its stages resume from their
checkpoints and carry their own seconds over, but the case's `seconds.total` used to be the last sitting's wall
alone. A sitting that ends without a record notes when it started, how long it ran and on what machine in
`<run_dir>/earlier-sittings.json`; the sitting that writes the record adds them to its own (`seconds.this_sitting`
+ `seconds.earlier_sittings` = `seconds.total`), lists them in the record (`earlier_sittings`) and deletes the
file. A sitting killed outright (SIGKILL, a power cut), or stopped by a signal where no handler turns it into an
interrupt (`intraq.interrupts`: the CLI, the bench and campaign jobs do), notes nothing: its seconds are missing
from the total (its stages' own seconds still hold what their last checkpoint saw).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from intraq.artifacts import load_json, save_json
from intraq.errors import UserInputError

LEDGER = "earlier-sittings.json"


def _valid(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), (int, float)):
        return False
    try:
        return datetime.fromisoformat(str(entry.get("started"))).tzinfo is not None
    except ValueError:
        return False


def read_ledger(run_dir: Path) -> list[dict]:
    """The noted sittings, oldest first (none without a ledger); a damaged ledger stops the run before any work,
    with the fix."""
    path = run_dir / LEDGER
    if not path.exists():
        return []
    entries = load_json(path)
    if not isinstance(entries, list) or not all(_valid(e) for e in entries):
        raise UserInputError(f"{path} is not a list of earlier sittings ({{started: ISO time with zone, seconds, "
                             "machine}}); delete it (the record then counts only the sittings from now on)")
    return entries


def note_sitting(run_dir: Path, entry: dict) -> None:
    """Add a sitting that stopped before its record to the ledger. Never raises: it runs while another exception
    (the interrupt) is on its way out, which must stay the one the caller sees."""
    try:
        entries = read_ledger(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json([*entries, entry], run_dir / LEDGER)
    except Exception as exc:  # timing metadata: never worth hiding the interrupt behind
        print(f"intraq: could not note this sitting's wall time in {run_dir / LEDGER} ({exc}); the record's "
              "seconds.total will leave it out", file=sys.stderr)


def drop_counted(run_dir: Path, counted: list[dict]) -> None:
    """Forget the sittings a stored record already counted (its `earlier_sittings`), left when a run stopped
    between writing its record and deleting the ledger; those of a later re-run stay. Decided by content."""
    path = run_dir / LEDGER
    if not counted or not path.exists():
        return
    entries = read_ledger(run_dir)
    kept = [e for e in entries if e not in counted]
    if len(kept) == len(entries):
        return
    if kept:
        save_json(kept, path)
    else:
        path.unlink(missing_ok=True)


def forget(run_dir: Path) -> None:
    (run_dir / LEDGER).unlink(missing_ok=True)


def total_seconds(entries: list[dict]) -> float:
    return float(sum(e["seconds"] for e in entries))
