"""Read results/<profile>/ into pandas: one row per (table, cell, seed), per-cell summaries, figure data."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from intraq.claims import machine_class
from intraq.errors import UserInputError
from intraq.report.overrides import settings_beyond_cell
from intraq.results import cells_dir, figures_dir, read_cell_record
from intraq.tables import METRICS, Cell, all_tables, cell_index


@dataclass
class FigureData:
    """One image set's figure material, as `collect.save_figure_data` stored it."""

    case: str
    seed: int
    meta: dict[str, Any]
    grid_images: np.ndarray  # (G, H, W, C) uint8
    grid_labels: np.ndarray
    features: np.ndarray  # (F, D) float
    feature_labels: np.ndarray
    diversity: float


@dataclass
class BenchResults:
    """Everything the report shows, read from results/ only."""

    profile: str
    results_dir: Path
    rows: pd.DataFrame
    figures: dict[str, FigureData] = field(default_factory=dict)  # "<case>-seed<N>" -> data

    def cell_rows(self, table: str, cell: str) -> pd.DataFrame:
        rows = self.rows
        return rows[(rows["table"] == table) & (rows["cell"] == cell)]

    def values(self, table: str, metric: str) -> dict[str, list[float]]:
        """Cell key -> per-seed values of `metric` (NaNs dropped), for `intraq.claims`."""
        out: dict[str, list[float]] = {}
        for cell in (c.key for t in all_tables() if t.key == table for c in t.cells):
            col = self.cell_rows(table, cell)[metric]
            out[cell] = [float(v) for v in col if not math.isnan(float(v))]
        return out


def _machine_text(machine: dict[str, Any] | None) -> str:
    if not machine:
        return "unknown"
    parts = [machine.get("gpu") or machine.get("processor") or "?", f"{machine.get('cpu_count', '?')} CPUs"]
    parts.append(f"{machine.get('torch_threads', '?')} torch threads")
    parts.append(f"torch {machine.get('torch', '?')}, device {machine.get('device', '?')}")
    return ", ".join(str(p) for p in parts)


def _row(blob: dict[str, Any], path: Path, cell: Cell | None) -> dict[str, Any]:
    acc = blob.get("accuracy", {})
    paper = blob.get("paper", {})
    return {
        "table": blob["table"], "cell": blob["cell"], "label": blob.get("label", blob["cell"]),
        "seed": int(blob["seed"]), "case": blob["case"], "method": blob.get("method"),
        "paper_value": paper.get("value"), "paper_table": paper.get("table"), "paper_row": paper.get("row"),
        "paper_setting": paper.get("setting"), "num_images": blob.get("num_images"),
        "paper_images": blob.get("paper_images"),
        **{m: float(acc[m]) if acc.get(m) is not None else math.nan for m in METRICS},
        "best_epoch_index": acc.get("best_epoch_index"), "teacher": acc.get("teacher"),
        "diverged_at_epoch": acc.get("diverged_at_epoch"),
        "seconds_total": float(blob.get("seconds", {}).get("total", 0.0)),
        "seconds": blob.get("seconds", {}), "git_commit": blob.get("git_commit"),
        "git_commit_note": blob.get("git_commit_note"),
        "machine": _machine_text(blob.get("machine")),
        "machine_class": machine_class(blob.get("machine")),
        "threads": (blob.get("machine") or {}).get("torch_threads"),
        "path": blob.get("path", "reference"),  # cell files name it only when not the reference path
        "fixture": bool(blob.get("fixture", False)),
        "rotation_degrees": blob.get("rotation_degrees"), "note": blob.get("note", ""),
        "teacher_name": (blob.get("config") or {}).get("teacher", {}).get("name"),
        "dataset": (blob.get("config") or {}).get("data", {}).get("name"), "file": path.name,
        "result_file": blob.get("result_file"),
        "data_identity": blob.get("data_identity"),
        "settings_beyond_cell": settings_beyond_cell(blob, cell),
    }


def load_figure_data(path: Path) -> FigureData:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return FigureData(
            case=meta["case"], seed=int(meta["seed"]), meta=meta, grid_images=z["grid_images"],
            grid_labels=z["grid_labels"], features=z["features"].astype(np.float32),
            feature_labels=z["feature_labels"], diversity=float(z["diversity"]),
        )


def _figure_of_current_run(data: FigureData, folder: Path) -> bool:
    """Figure data stamped with another run than the case's record (a re-run whose figure data did not follow,
    e.g. cut short between the two) is left out rather than shown beside the wrong record; unstamped (older)
    data is kept. The run id decides where both have one: two runs can start in the same second."""
    started, run_id = data.meta.get("record_started"), data.meta.get("record_run_id")
    record = folder / f"{data.case}-seed{data.seed}.json"
    if not (started or run_id) or not record.exists():
        return True
    try:
        blob = json.loads(record.read_text())
    except (OSError, ValueError):
        return True
    if run_id and blob.get("run_id"):
        return blob["run_id"] == run_id
    return blob.get("started") == started


def load_results(results: str | Path, profile: str) -> BenchResults:
    """Read the cell files (and figure data) of `profile`; fails with a hint when there are none."""
    results = Path(results)
    folder = cells_dir(results, profile)
    files = sorted(folder.glob("*.json")) if folder.exists() else []
    if not files:
        raise UserInputError(
            f"no bench results under {folder}; run `pytest bench --profile {profile}` (or `tox -e paper`) first"
        )
    cells = cell_index()
    blobs = [(read_cell_record(p), p) for p in files]
    rows = pd.DataFrame([_row(blob, p, cells.get((blob["table"], blob["cell"]))) for blob, p in blobs])
    rows = rows[[(t, c) in cells for t, c in zip(rows["table"], rows["cell"], strict=True)]].reset_index(drop=True)
    figures: dict[str, FigureData] = {}
    fig_folder = figures_dir(results, profile)
    if fig_folder.exists():
        for path in sorted(fig_folder.glob("*.npz")):
            data = load_figure_data(path)
            if _figure_of_current_run(data, results / profile):
                figures[f"{data.case}-seed{data.seed}"] = data
    return BenchResults(profile=profile, results_dir=results, rows=rows, figures=figures)


def summarize(results: BenchResults) -> pd.DataFrame:
    """One row per table cell (in the tables' order): paper value, ours mean ± std and n per metric, diffs."""
    records = []
    for table in all_tables():
        for cell in table.cells:
            rows = results.cell_rows(table.key, cell.key)
            rec: dict[str, Any] = {
                "table": table.key, "cell": cell.key, "label": cell.label, "paper_value": cell.paper.value,
                "paper_where": f"{cell.paper.table}, {cell.paper.row}", "paper_images": cell.paper_images,
                "n": int(len(rows)), "cases": ", ".join(sorted(set(rows["case"]))) if len(rows) else "",
                "num_images": "; ".join(f"{v:,}" for v in sorted({int(v) for v in rows["num_images"].dropna()})),
                "images_used": float(rows["num_images"].dropna().min()) if rows["num_images"].notna().any()
                else math.nan,
                "teacher": float(rows["teacher"].mean()) if len(rows) else math.nan,
                "seeds": ", ".join(str(s) for s in sorted(rows["seed"])) if len(rows) else "",
            }
            for metric in METRICS:
                vals = rows[metric].dropna() if len(rows) else pd.Series(dtype=float)
                rec[f"{metric}_n"] = int(len(vals))
                rec[f"{metric}_mean"] = float(vals.mean()) if len(vals) else math.nan
                rec[f"{metric}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
                rec[f"{metric}_diff"] = rec[f"{metric}_mean"] - cell.paper.value
            records.append(rec)
    return pd.DataFrame(records)
