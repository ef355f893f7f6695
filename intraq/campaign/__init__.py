"""Run the bench's cases from any runner: pytest (one process or pytest-xdist), or a submitit campaign (local
or Slurm). One enumeration of the cases (`intraq.tables.jobs`), one function that runs a cell (`run_cell`), one
lock per case and seed so a case never runs twice at once, and the state (`status`) all runners share.
"""

from intraq.campaign.plan import PlannedCase, plan_cases
from intraq.campaign.run import CaseSettings, DeadlineReached, check_results_version, run_cell, run_job

__all__ = [
    "CaseSettings", "DeadlineReached", "PlannedCase", "check_results_version", "plan_cases", "run_cell", "run_job",
]
