import importlib.util
import sys
from pathlib import Path

from intraq.tables import jobs

_SPEC = importlib.util.spec_from_file_location("bench_parallel", Path(__file__).parents[1] / "bench" / "parallel.py")
parallel = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_parallel"] = parallel  # dataclasses look their module up there
_SPEC.loader.exec_module(parallel)


def test_chains_cover_every_job_once_seed_by_seed():
    chains = parallel.make_chains("smoke", seeds=2, first=[])
    listed = [(j.case, j.seed) for c in chains for j in c.jobs]
    assert sorted(listed) == sorted((j.case, j.seed) for j in jobs("smoke", 2))
    assert len(set(listed)) == len(listed)
    seeds = [c.jobs[0].seed for c in chains]
    assert seeds == sorted(seeds)  # every seed-0 job starts before any seed-1 job


def test_data_amount_chain_grows_and_first_cases_lead():
    chains = parallel.make_chains("smoke", seeds=1, first=[])
    amount_chain = next(c for c in chains if len(c.jobs) > 1)
    amounts = [parallel.data_amount_images(j, "smoke") for j in amount_chain.jobs]
    assert amounts == sorted(amounts) and len(amounts) == 4  # 5,120 is the shared cell, a job of its own
    last = [c for c in chains if len(c.jobs) == 1][-1].jobs[0].case
    assert parallel.make_chains("smoke", seeds=1, first=[last])[0].jobs[0].case == last
