"""Wall seconds a case spent in earlier sittings, so that a resumed case's record counts all of them.

A case can outlive a sitting (Ctrl-C, SIGTERM before a Slurm limit, a session's end): its stages resume from their
checkpoints and carry their own seconds over, but the case's `seconds.total` used to be the last sitting's wall
alone. A sitting that ends without a record notes its wall seconds in `<run_dir>/earlier-sittings.json`; the
sitting that writes the record adds them to its own (`seconds.this_sitting` + `seconds.earlier_sittings` =
`seconds.total`) and deletes the file with the stage-2 checkpoints. A sitting killed outright (SIGKILL, a power
cut) notes nothing: its seconds are missing from the total, and its stages' own seconds still hold what their
last checkpoint saw.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from intraq.artifacts import load_json, save_json
from intraq.errors import UserInputError

LEDGER = "earlier-sittings.json"


def note_sitting(run_dir: Path, started: str, seconds: float) -> None:
    """Add a sitting that stopped before its record (started at `started`, ran `seconds`) to the ledger."""
    entries = sittings(run_dir)
    entries.append({"started": started, "seconds": round(float(seconds), 3)})
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(entries, run_dir / LEDGER)


def sittings(run_dir: Path) -> list[dict]:
    """The noted sittings, oldest first (none when there is no ledger)."""
    path = run_dir / LEDGER
    if not path.exists():
        return []
    entries = load_json(path)
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("seconds"), (int, float)) and isinstance(e.get("started"), str)
        for e in entries
    ):
        raise UserInputError(f"{path} is not a list of earlier sittings ({{started, seconds}}); delete it (the "
                             "record then counts only the sittings from now on)")
    return entries


def earlier_seconds(run_dir: Path) -> float:
    return float(sum(e["seconds"] for e in sittings(run_dir)))


def drop_before(run_dir: Path, finished: str) -> None:
    """Forget the sittings that started before a stored record of the case finished: they were that record's
    (left when a run stopped between writing its record and deleting the ledger) or older, never a re-run's."""
    entries = sittings(run_dir)
    end = datetime.fromisoformat(finished)
    kept = [e for e in entries if datetime.fromisoformat(e["started"]) > end]
    if len(kept) == len(entries):
        return
    if kept:
        save_json(kept, run_dir / LEDGER)
    else:
        (run_dir / LEDGER).unlink(missing_ok=True)


def forget(run_dir: Path) -> None:
    (run_dir / LEDGER).unlink(missing_ok=True)
