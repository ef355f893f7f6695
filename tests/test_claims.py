"""Claim verdicts (holds / fails / inconclusive) and the tables they are checked on."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from intraq.claims import FAILS, HOLDS, INCONCLUSIVE, Summary, check_pair, evaluate_claim, welch_interval
from intraq.pipeline import case_hash
from intraq.tables import INTRAQ_BASE, Claim, all_tables, cell_config, get_table, jobs, scaled_amount

GREATER = Claim("g", "t", "a beats b", "greater", (("a", "b"),))
NO_GAIN = Claim("n", "t", "a adds nothing over b", "no_gain", (("a", "b"),), 0.5)
ORDER = Claim("o", "t", "a > b > c", "ordering", (("a", "b"), ("b", "c")))


def test_summary_uses_sample_std() -> None:
    s = Summary.of([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert Summary.of([5.0]).std == 0.0 and math.isnan(Summary.of([]).mean)


def test_welch_interval_agrees_with_scipy_welch_test() -> None:
    a, b = [70.1, 71.3, 70.6, 69.9], [69.0, 70.2, 68.7]
    d, lo, hi, df = welch_interval(Summary.of(a), Summary.of(b), alpha=0.05)
    t, p_two = stats.ttest_ind(a, b, equal_var=False)
    se = (hi - lo) / 2 / stats.t.ppf(0.95, df)
    assert d / se == pytest.approx(t, rel=1e-9)
    assert (lo > 0) == (p_two / 2 < 0.05)  # the interval's lower end is the one-sided 5% test


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ([70.0, 71.0, 70.5], [60.0, 61.0, 60.5], HOLDS),
        ([60.0, 61.0, 60.5], [70.0, 71.0, 70.5], FAILS),
        ([70.0, 60.0, 65.0], [64.0, 66.0, 65.0], INCONCLUSIVE),  # within the seed noise
        ([70.0], [60.0, 61.0], INCONCLUSIVE),  # one seed: no noise estimate
    ],
)
def test_greater(a: list[float], b: list[float], verdict: str) -> None:
    assert evaluate_claim(GREATER, {"a": a, "b": b}).verdict == verdict


def test_inconclusive_reasons_are_given() -> None:
    one = evaluate_claim(GREATER, {"a": [70.0], "b": [60.0, 61.0]}).pairs[0]
    assert "fewer than 2" in one.reason and one.diff == pytest.approx(9.5)
    missing = evaluate_claim(GREATER, {"a": [70.0, 71.0]}).pairs[0]
    assert missing.verdict == INCONCLUSIVE and "no results for b" in missing.reason


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ([66.40, 66.50, 66.45], [66.30, 66.50, 66.40], HOLDS),  # gain well below half a point
        ([70.00, 70.20, 70.10], [66.00, 66.10, 66.20], FAILS),  # gains about four points
        ([67.00, 66.00, 66.60], [66.00, 66.20, 66.10], INCONCLUSIVE),  # could be either
    ],
)
def test_no_gain(a: list[float], b: list[float], verdict: str) -> None:
    assert evaluate_claim(NO_GAIN, {"a": a, "b": b}).verdict == verdict


def test_zero_variance_is_decided_exactly() -> None:
    assert check_pair("a", "b", "greater", 0.0, {"a": [2.0, 2.0], "b": [1.0, 1.0]}).verdict == HOLDS
    assert check_pair("a", "b", "greater", 0.0, {"a": [1.0, 1.0], "b": [1.0, 1.0]}).verdict == INCONCLUSIVE


def test_ordering_needs_every_pair() -> None:
    good = {"a": [80.0, 80.5, 80.2], "b": [70.0, 70.4, 70.1], "c": [60.0, 60.3, 60.2]}
    assert evaluate_claim(ORDER, good).verdict == HOLDS
    swapped = dict(good, c=[90.0, 90.2, 90.1])
    result = evaluate_claim(ORDER, swapped)
    assert result.verdict == FAILS and [p.verdict for p in result.pairs] == [HOLDS, FAILS]
    unsure = dict(good, c=[60.0])
    assert evaluate_claim(ORDER, unsure).verdict == INCONCLUSIVE


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown claim kind"):
        evaluate_claim(Claim("x", "t", "x", "bigger", (("a", "b"),)), {"a": [1.0], "b": [1.0]})


# ------------------------------------------------------------------------------------------------ the tables


def test_every_claim_names_cells_of_its_table() -> None:
    for table in all_tables():
        keys = {c.key for c in table.cells}
        assert table.claims, table.key
        for claim in table.claims:
            assert claim.table == table.key
            assert {k for pair in claim.pairs for k in pair} <= keys


def test_paper_values_carry_table_row_and_setting() -> None:
    values = {(c.table, c.key): c.paper.value for t in all_tables() for c in t.cells}
    assert values[("lor", "L")] == 66.47 and values[("lor", "L+R+F")] == 66.42
    assert values[("data_amount", "256")] == 65.87 and values[("data_amount", "20000")] == 66.50
    assert values[("comparison", "real")] == 67.89 and values[("comparison", "qimera")] == 63.84
    assert values[("mdc_vs_adi", "mdc")] == 63.77 and values[("mdc_vs_adi", "adi")] == 54.97
    assert values[("main_cifar10", "w4a4")] == 91.49 and values[("main_cifar10", "w3a3")] == 77.07
    for table in all_tables():
        network = "ResNet-20" if table.key == "main_cifar10" else "ResNet-18"
        for cell in table.cells:
            assert cell.paper.table and cell.paper.row and network in cell.paper.setting
    assert "20,000" in get_table("data_amount").cell("20000").paper.setting


def test_shared_intraq_cell_has_one_hash_and_runs_once_per_seed() -> None:
    shared = [("mdc_vs_adi", "mdc"), ("lor", "L+F"), ("data_amount", "5120"), ("comparison", "intraq"),
              ("main_cifar10", "w4a4")]
    hashes = {case_hash(cell_config(get_table(t).cell(c), "smoke", 0)) for t, c in shared}
    assert len(hashes) == 1
    found = jobs("smoke", seeds=2)
    assert len(found) == 2 * 13  # 16 cells, the shared one counted once, plus W3A3
    assert sum(1 for j in found if len(j.cells) == 5) == 2


def test_data_amounts_scale_with_the_profile() -> None:
    assert [scaled_amount(n, 256) for n in (256, 1280, 5120, 10000, 20000)] == [13, 64, 256, 500, 1000]
    assert [scaled_amount(n, 5120) for n in (256, 1280, 5120, 10000, 20000)] == [256, 1280, 5120, 10000, 20000]
    assert scaled_amount(256, 10) == 1
    cfg = cell_config(get_table("data_amount").cell("1280"), "cifar10-cpu", 3)
    assert (cfg.synth.num_images, cfg.seed, cfg.synth.method) == (320, 3, "intraq")


def test_cells_map_to_their_operations() -> None:
    lor = get_table("lor")
    assert cell_config(lor.cell("L"), "smoke").synth.lor == "L"
    assert cell_config(lor.cell("L+R+F"), "smoke").synth.lor == "L+R+F"
    adi = cell_config(get_table("mdc_vs_adi").cell("adi"), "smoke")
    assert adi.synth.method == "adi" and adi.synth.variant == "paper"
    methods = [cell_config(c, "smoke").synth.method for c in get_table("comparison").cells]
    assert methods == ["real", "qimera", "squant", "intraq"]
    assert "synth.variant=paper" in INTRAQ_BASE and "synth.lor=L+F" in INTRAQ_BASE
