"""Learning curves from the records: test top-1 per evaluated epoch of one cell, per seed, with its best epoch.

The curve of the shared IntraQ W4A4 cell says how much of stage 2 a result needs (issue "The learning curve at
official strength"): drawn for the report's profile and, beside it, for every other profile in the same results
folder that ran the same cell on the same data set (each in its own setting: epochs and lr differ). Runs that are no
table cell (a record with its own `--set`s, as the long curve runs of issue 17 and their controls) are drawn too,
each labelled with what it changed, so a report can show a curve no cell holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from intraq.claims import machine_class
from intraq.errors import UserInputError
from intraq.report.overrides import settings_beyond_profile
from intraq.results import cells_dir, read_cell_record, read_result

CURVE_CELL = ("main_cifar10", "w4a4")  # the IntraQ W4A4 cell that five tables share


@dataclass(frozen=True)
class Curve:
    """One run's evaluated epochs (stage-2 epoch index, calibration epochs first) and their test top-1, with the
    run's machine class (as the report's comparisons name it)."""

    profile: str
    seed: int
    epochs: tuple[int, ...]
    accuracy: tuple[float, ...]
    calibration_epochs: int
    best_epoch: int | None
    dataset: str | None
    data_identity: str | None
    machine: str
    diverged_at: int | None = None  # the epoch whose KD loss turned non-finite (the run stopped there)
    method: str = ""
    settings: tuple[str, ...] | None = ()  # beyond its profile's, for runs that are no cell (None: unknown)

    @property
    def label(self) -> str:
        """What the run was: profile, method, settings beyond the profile, seed."""
        settings = "settings unknown" if self.settings is None else ", ".join(self.settings) or "profile settings"
        return f"{self.profile} {self.method} ({settings}) seed {self.seed}"

    def same_data(self, other: Curve) -> bool:
        """Same data set: by content identity where both records have one, else by name."""
        if self.data_identity and other.data_identity:
            return self.data_identity == other.data_identity
        return self.dataset == other.dataset

    @property
    def best(self) -> float | None:
        if self.best_epoch is None or self.best_epoch not in self.epochs:
            return None
        return self.accuracy[self.epochs.index(self.best_epoch)]


def _curve(profile: str, folder: Path, cell_file: Path) -> Curve | None:
    """The curve of one cell file's record, or None (no history, or a record this code cannot read: a report
    never fails for another profile's odd file)."""
    try:
        return _read_curve(profile, folder, cell_file)
    except (UserInputError, KeyError, ValueError, TypeError, AttributeError):
        return None


def _read_curve(profile: str, folder: Path, cell_file: Path) -> Curve | None:
    record_path = folder / read_cell_record(cell_file).get("result_file", "")
    if not record_path.is_file():
        return None
    return record_curve(record_path, profile)


def record_curve(record_path: Path, profile: str | None = None) -> Curve | None:
    """The curve of one run record (a table cell's, or a run with its own overrides); None without a history."""
    record = read_result(record_path)
    profile = profile or record.profile
    history = record.history or []
    points = [(int(h["epoch"]), float(h["acc"])) for h in history if h.get("acc") is not None]
    if not points:
        return None
    return Curve(
        profile=profile, seed=record.seed, epochs=tuple(e for e, _ in points), accuracy=tuple(a for _, a in points),
        calibration_epochs=sum(1 for h in history if is_calibration_epoch(h)),
        best_epoch=record.accuracy.get("best_epoch_index"),
        dataset=(record.config.get("data") or {}).get("name"), data_identity=record.data_identity,
        machine=machine_class(record.machine), diverged_at=record.accuracy.get("diverged_at_epoch"),
        method=record.method, settings=settings_beyond_profile(record.config, record.profile, record.method),
    )


def is_calibration_epoch(entry: dict) -> bool:
    """KD fine-tuning's history names its phase; Qimera's joint loop flags its calibration epochs instead."""
    return entry.get("phase") == "calibration" or entry.get("calibrating") is True


def load_curves(results: str | Path, profile: str, cell: tuple[str, str] = CURVE_CELL) -> list[Curve]:
    """The curves of `cell` at `profile`, one per seed (runs without a per-epoch history are skipped)."""
    folder = Path(results) / profile
    files = sorted(cells_dir(Path(results), profile).glob(f"{cell[0]}--{cell[1]}-seed*.json"))
    return sorted((c for c in (_curve(profile, folder, f) for f in files) if c is not None), key=lambda c: c.seed)


def curves_beside(results: str | Path, profile: str, cell: tuple[str, str] = CURVE_CELL) -> dict[str, list[Curve]]:
    """This profile's curves first, then those of every other profile in `results` on the same data set."""
    own = load_curves(results, profile, cell)
    if not own:
        return {}
    out = {profile: own}
    for other in sorted(p.name for p in Path(results).iterdir() if p.is_dir() and p.name != profile):
        curves = [c for c in load_curves(results, other, cell) if any(c.same_data(o) for o in own)]
        if curves:
            out[other] = curves
    return out


@dataclass(frozen=True)
class StageTwoCut:
    """Where one run's curve comes within `within` points of its best (issue 17: a shorter stage 2 that keeps
    the result). `reaches`: the first evaluated epoch at or above best − within, so the best epoch of a run cut
    there is within `within` of the full run's best; `stays`: the first from which no later evaluated epoch
    falls below it, so the final epoch of a run cut anywhere after it is too (None: the last evaluated epoch is
    below it, the curve ends lower). Epochs count from 0 with the calibration epochs first, as the records'
    history; a cut at epoch e keeps e + 1 epochs (`finetune.epochs`)."""

    seed: int
    best: float
    best_epoch: int
    reaches: int
    stays: int | None
    last_epoch: int
    within: float


def stage2_cut(curve: Curve, within: float = 0.3) -> StageTwoCut:
    """The cut epochs of one curve (see `StageTwoCut`)."""
    if not within >= 0:  # also NaN
        raise ValueError(f"within must be >= 0 points, got {within}")
    best = max(curve.accuracy)
    best_epoch = max(e for e, a in zip(curve.epochs, curve.accuracy, strict=True) if a == best)  # ties: later
    floor = best - within
    reaches = next(e for e, a in zip(curve.epochs, curve.accuracy, strict=True) if a >= floor)
    stays = None
    for e, a in reversed(list(zip(curve.epochs, curve.accuracy, strict=True))):
        if a < floor:
            break
        stays = e
    return StageTwoCut(curve.seed, best, best_epoch, reaches, stays, curve.epochs[-1], within)


def curves_outside_grid(results: str | Path, like: list[Curve]) -> list[Curve]:
    """The curves of every run in `results` that no cell file points to (any profile), on the data of `like`:
    runs with their own settings, e.g. a 256-image stage 2 of 64 epochs. A record with no setting beyond its
    profile's is a cell's earlier run that a newer one replaced, and is left out; so are unreadable files."""
    out = []
    for folder in sorted(p for p in Path(results).iterdir() if p.is_dir()):
        in_grid = set()
        for cell_file in cells_dir(Path(results), folder.name).glob("*.json"):
            try:
                in_grid.add(read_cell_record(cell_file).get("result_file"))
            except (UserInputError, ValueError, OSError):
                continue
        for record_path in sorted(folder.glob("*.json")):
            if record_path.name in in_grid:
                continue
            try:
                curve = record_curve(record_path)
            except (UserInputError, KeyError, ValueError, TypeError, AttributeError, OSError):
                continue
            if curve is not None and curve.settings != () and any(curve.same_data(c) for c in like):
                out.append(curve)
    return out
