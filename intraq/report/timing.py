"""Compute behind a set of runs, in two labelled numbers: summed run time (each run's own `seconds.total`, added
up) and wall time (how long at least one of them was running, from the run records' `started`/`finished`).
Runs in parallel overlap in wall time, so the sum overstates how long a table took and the wall time does not."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Compute:
    runs: int
    summed_seconds: float
    wall_seconds: float | None  # None when no run record has both timestamps
    timed_runs: int  # runs whose record has both timestamps (the wall time covers these)


def merged_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (seconds): overlapping runs count once."""
    total, current = 0.0, None
    for start, end in sorted(spans):
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current is not None:
        total += current[1] - current[0]
    return total


def run_spans(results_dir: Path, profile: str, case: str, seed: int) -> list[tuple[float, float]]:
    """[(started, finished), ...] of one run as POSIX seconds, from results/<profile>/<case>-seed<N>.json if
    stored: its last sitting, and each earlier sitting of a resumed run (`earlier_sittings`: start + seconds)."""
    path = Path(results_dir) / profile / f"{case}-seed{seed}.json"
    try:
        blob = json.loads(path.read_text())
        start, end = datetime.fromisoformat(blob["started"]), datetime.fromisoformat(blob["finished"])
    except (OSError, KeyError, TypeError, ValueError):
        return []
    spans = [(start.timestamp(), end.timestamp())]
    for entry in blob.get("earlier_sittings") or []:
        try:
            first = datetime.fromisoformat(entry["started"]).timestamp()
            spans.append((first, first + float(entry["seconds"])))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return spans


def compute_of(results_dir: Path, profile: str, runs: Sequence[tuple[str, int, float]]) -> Compute:
    """Compute of distinct runs given as (case, seed, seconds_total)."""
    per_run = [run_spans(results_dir, profile, c, seed) for c, seed, _ in runs]
    spans = [span for spans in per_run for span in spans]
    timed = sum(1 for spans in per_run if spans)
    return Compute(len(runs), float(sum(t for _, _, t in runs)), merged_seconds(spans) if spans else None, timed)


def minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:,.1f} min"


def describe(c: Compute) -> str:
    """"wall time X (...); summed run time Y over N runs", labelled."""
    if c.wall_seconds is None:
        wall = "wall time unknown (no run record with start and finish times)"
    else:
        cover = "" if c.timed_runs == c.runs else f", from the {c.timed_runs} runs with timestamps"
        wall = f"wall time {minutes(c.wall_seconds)} (while at least one run was running{cover})"
    return f"{wall}; summed run time {minutes(c.summed_seconds)} over {c.runs} runs"
