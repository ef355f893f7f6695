"""Spread the bench's (case, seed) jobs over several processes on one machine, with a deadline.

    python bench/parallel.py --profile cifar10-cpu --seeds 3 --workers 8 --deadline 480 -- --data-root DATA

Why: at small models a GPU is mostly idle between kernel launches, so several processes share it well; and a lent
machine has a fixed time. Each job is one `pytest bench/test_tables.py -k "<hash> and seed<N>"` process (the same
cases, files and records as a plain bench run; finished cases are reused). Jobs start in priority order: seed 0
of every case first, then the other seeds. Data-amount jobs of one seed run in one chain, smallest amount first,
so each set extends the previous one's per-batch files instead of regenerating them in parallel. At the deadline
running jobs are stopped: a stopped job leaves no result (its fine-tuning checkpoint stays in the artifacts).
Arguments after `--` go to every pytest process; location options only (--data-root, --results, --artifacts,
--device): a `--set` there would change the case hashes the jobs select by.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from intraq.tables import Job, cell_config, get_table, jobs

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Chain:
    """Jobs that run one after another in one worker."""

    jobs: list[Job]
    priority: tuple[int, int]


def data_amount_images(job: Job, profile: str) -> int | None:
    """The number of images of a job that shows a data-amount cell (None for other jobs)."""
    table = get_table("data_amount")
    keys = [c.split("-", 1)[1] for c in job.cells if c.startswith(f"{table.key}-")]
    return cell_config(table.cell(keys[0]), profile).synth.num_images if keys else None


def make_chains(profile: str, seeds: int, first: list[str]) -> list[Chain]:
    """Chains in start order: cases named in `first` (by hash), then seed by seed in the tables' order."""
    chains: list[Chain] = []
    amounts: dict[int, list[tuple[int, Job]]] = {}
    for index, job in enumerate(jobs(profile, seeds)):
        n = data_amount_images(job, profile)
        if n is not None and len(job.cells) == 1:  # the shared IntraQ cell stays a job of its own
            amounts.setdefault(job.seed, []).append((n, job))
            continue
        rank = 0 if job.case in first else 1
        chains.append(Chain([job], (rank, job.seed * 1000 + index)))
    for seed, members in amounts.items():
        ordered = [job for _, job in sorted(members, key=lambda m: m[0])]
        chains.append(Chain(ordered, (1, seed * 1000 + 999)))
    return sorted(chains, key=lambda c: c.priority)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which running jobs are stopped")
    parser.add_argument("--first", action="append", default=[], help="case hash to start before the rest")
    parser.add_argument("--logs", default="parallel-logs", help="folder for one log per job")
    parser.add_argument("--give-up-after", type=int, default=3,
                        help="start nothing new once this many jobs failed before any passed (a broken setup)")
    parser.add_argument("--dry-run", action="store_true", help="print the chains and exit")
    args = parser.parse_args(argv)

    chains = make_chains(args.profile, args.seeds, args.first)
    if args.dry_run:
        for chain in chains:
            print(" -> ".join(f"{j.case}-seed{j.seed} ({', '.join(j.cells)})" for j in chain.jobs))
        return 0
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    lock = threading.Lock()
    pending = list(chains)
    status: dict[str, str] = {}

    def remaining() -> float | None:
        return None if args.deadline is None else args.deadline - (time.monotonic() - start)

    def broken() -> bool:
        codes = [s.split(" ", 1)[0] for s in status.values()]
        return "0" not in codes and sum(1 for c in codes if c not in {"0", "not"}) >= args.give_up_after

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                chain = pending.pop(0)
            for job in chain.jobs:
                left = remaining()
                name = f"{job.case}-seed{job.seed}"
                if left is not None and left <= 0:
                    status[name] = "not started (deadline)"
                    continue
                if broken():
                    status[name] = "not started (every finished job failed)"
                    continue
                cmd = [sys.executable, "-m", "pytest", str(REPO / "bench" / "test_tables.py"), "-q",
                       "-p", "no:cacheprovider", "--profile", args.profile, "--seeds", str(args.seeds),
                       "-k", f"{job.case} and seed{job.seed}", *pytest_args]
                tic = time.monotonic()
                with open(logs / f"{name}.log", "w") as log:
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
                    try:
                        code = proc.wait(timeout=left)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        code = "stopped at the deadline"
                status[name] = f"{code} in {time.monotonic() - tic:.0f} s"
                print(f"[{time.monotonic() - start:6.0f} s] {name} ({', '.join(job.cells)}): {status[name]}",
                      flush=True)

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [n for n, s in status.items() if not s.startswith("0 ")]
    print(f"done in {time.monotonic() - start:.0f} s; {len(status) - len(failed)} of {len(status)} jobs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
