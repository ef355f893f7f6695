"""`intraq status`: claims x cells x seeds of a profile (done, running, pending, failed with its error), the
compute spent on the stored records and the estimated compute left."""

from __future__ import annotations

from pathlib import Path

from intraq.campaign.plan import DONE, FAILED, PENDING, RUNNING, PlannedCase, claim_verdicts, plan_cases
from intraq.tables import all_tables


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _state_text(p: PlannedCase | None) -> str:
    if p is None:
        return "-"
    if p.state == DONE:
        return f"done {p.accuracy:.2f}" if isinstance(p.accuracy, (int, float)) else "done"
    if p.state == RUNNING:
        return f"running@{(p.running or {}).get('host', '?')}"
    if p.state == FAILED:
        return "FAILED"
    return f"pending ~{_hours(p.estimate)}"


def status_text(profile: str, seeds: int, results: Path, extra: tuple[str, ...] = (),
                default_seconds: float | None = None, machine: str | None = None) -> str:
    """The status table and totals as text (what `intraq status` prints); with `machine` (a machine class, for
    `--same-machine`) a record of another class shows as pending, as a campaign with that option sees it."""
    planned = plan_cases(profile, seeds, results, extra, default_seconds, machine=machine)
    verdicts = claim_verdicts(results, profile)
    by_cell = {(c.name, p.seed): p for p in planned for c in p.cells}
    seed_cols = [f"seed {s}" for s in range(seeds)]
    header = ["cell", "case", *seed_cols]
    rows: list[list[str]] = []
    lines = [f"profile {profile}, results in {Path(results) / profile}; cells: best-epoch top-1 % when done", ""]
    for table in all_tables():
        claims = "; ".join(f"{c.text} [{verdicts.get(c.key, 'no results')}]" for c in table.claims)
        rows.append([f"{table.key}: {claims}"])
        for cell in table.cells:
            first = by_cell.get((cell.name, 0))
            rows.append([f"  {cell.key}", first.case if first else "?",
                         *(_state_text(by_cell.get((cell.name, s))) for s in range(seeds))])
    widths = [max(len(r[i]) for r in rows + [header] if len(r) > 1 and i < len(r)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines.append(fmt.format(*header))
    for row in rows:
        lines.append(row[0] if len(row) == 1 else fmt.format(*row))
    counts = {s: sum(1 for p in planned if p.state == s) for s in (DONE, RUNNING, PENDING, FAILED)}
    spent = sum(p.seconds or 0.0 for p in planned if p.state == DONE)
    left = [p for p in planned if p.state in (PENDING, RUNNING)]
    sources = sorted({p.estimate_source for p in left})
    lines += ["", f"{len(planned)} runs (distinct case x seed): " + ", ".join(f"{n} {s}" for s, n in counts.items()),
              f"compute spent: {_hours(spent)} (sum of the stored records' wall times)",
              f"estimated compute left: {_hours(sum(p.estimate for p in left))} for {len(left)} pending or running"
              + (f" (estimates: {'; '.join(sources)})" if sources else "")]
    failed = [p for p in planned if p.state == FAILED]
    if failed:
        lines += ["", "failed (kept; `intraq campaign --retry-failed` runs them again, `pytest bench -k <case>` too):"]
        lines += [f"  {p.name} ({', '.join(c.name for c in p.cells)}): {p.error}" for p in failed]
    return "\n".join(lines)
