"""`intraq campaign --stack K`: a profile's pending cases in claim order, run in this process, K cases that share a
stage 2 at a time (`intraq.stacking`: their KD fine-tuning as one vmap over K students on one device).

Why in-process: on a GPU, one ResNet-20 run uses about 2% of an H200 (issue 12); stacking fills it from one
process, where K processes would share it by time slices. It needs no submitit, so it runs on a lent machine that
has only torch. Each case holds its lock while its group runs (another campaign waits, then reuses), a group
whose estimate (its cases' estimates summed; a stacked record counts its group's time over the group's size)
would pass the deadline is not started, and a failed group keeps the error for each of its cases. Cell files
are written afterwards exactly as `run_cell` writes them for a single case (it reuses the record).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch

from intraq.campaign.plan import PlannedCase
from intraq.campaign.run import CaseSettings, check_results_version, run_cell, run_job
from intraq.campaign.state import case_lock, clear_failure, record_failure
from intraq.campaign.submit import CampaignOptions, CampaignReport, plan_selection
from intraq.device import pick_device
from intraq.pipeline import RunPaths
from intraq.stacking import run_cases_stacked, stack_groups
from intraq.tables import cell_config


def run_stacked_campaign(settings: CaseSettings, options: CampaignOptions, stack: int,
                         say: Callable[[str], None] = print, progress: bool = False) -> CampaignReport:
    """Run the selected pending cases `stack` at a time (see the module docstring); returns what happened."""
    deadline_at = None if options.deadline is None else time.time() + options.deadline  # from the start
    check_results_version(settings.results, settings.profile)
    device = pick_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    todo, report = plan_selection(settings, options, device.type, say)
    if not todo:
        return report
    paths = RunPaths.default(settings.artifacts, settings.results)
    cfgs = [cell_config(p.cells[0], settings.profile, p.seed, list(settings.extra)) for p in todo]
    planned_of = {id(cfg): p for cfg, p in zip(cfgs, todo, strict=True)}
    for group in stack_groups(cfgs, stack, paths):
        members = [planned_of[id(cfg)] for cfg in group]
        # as if one after another: what stacking saves is not known before a device's stacked records exist,
        # whose time counts as each case's share of its group's (`estimate.stacked_runs`)
        estimate = sum(p.estimate for p in members)
        if deadline_at is not None and time.time() + estimate > deadline_at:
            for p in members:  # a later, shorter group may still fit
                report.outcomes.append({"case": p.case, "seed": p.seed, "state": "pending",
                                        "reason": "would not finish before the deadline"})
                say(f"pending: {p.name} (its group's estimated {estimate:.0f} s would pass the deadline)")
            continue
        report.submitted.extend(members)
        for outcome in _run_group(group, members, paths, settings, device, progress):
            report.outcomes.append(outcome)
            say(_line(outcome, len(members)))
            if outcome.get("stopped"):  # a lone case stopped like Ctrl-C: so is the campaign, as for a group
                raise KeyboardInterrupt
    return report


def _run_group(group: list, members: list[PlannedCase], paths: RunPaths, settings: CaseSettings,
               device: torch.device, progress: bool) -> list[dict[str, Any]]:
    tic = time.perf_counter()
    if len(members) == 1:  # alone (a method without a stage 2 to share, or nothing to share it with): a campaign job
        p = members[0]
        return [run_job(p.case, p.seed, [c.name for c in p.cells], settings)]
    with ExitStack() as locks:
        for p in members:
            locks.enter_context(case_lock(settings.results, settings.profile, p.case, p.seed))
        try:
            records = run_cases_stacked(group, paths, device, settings.fast or "auto", progress, settings.compile,
                                        settings.same_machine)
        except Exception as exc:  # noqa: BLE001 - kept for `intraq status`; the campaign goes on
            for p in members:
                record_failure(settings.results, settings.profile, p.case, p.seed, exc)
            return [{"case": p.case, "seed": p.seed, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    for p in members]
        for p in members:
            clear_failure(settings.results, settings.profile, p.case, p.seed)
    seconds = time.perf_counter() - tic
    out = []
    for p, record in zip(members, records, strict=True):
        for cell in p.cells:  # the record is stored now: run_cell reuses it and writes the cell file
            run_cell(cell, p.seed, settings, device)
        out.append({"case": p.case, "seed": p.seed, "state": "done", "reused": False, "seconds": seconds,
                    "accuracy": record.accuracy.get("best_epoch")})
    return out


def _line(o: dict[str, Any], group_size: int) -> str:
    name = f"{o['case']}-seed{o['seed']}"
    if o["state"] == "pending":  # a lone case's job that met the deadline after all
        return f"pending: {name} ({o.get('reason', '')})"
    if o["state"] == "done":
        acc = f", best epoch {o['accuracy']:.2f}%" if o.get("accuracy") is not None else ""
        how = "alone" if group_size == 1 else f"in a group of {group_size}"
        return f"done: {name} ({how}, {o['seconds']:.0f} s{acc})"
    return f"failed: {name}: {o.get('error')}"
