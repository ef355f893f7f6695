"""Claim verdicts (holds / fails / inconclusive) and the tables they are checked on."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from intraq.claims import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NO_RESULTS,
    NOT_COMPARABLE,
    PAIRED,
    WELCH,
    Sample,
    Summary,
    check_pair,
    check_pairs,
    evaluate_claim,
    fmt_apart,
    fmt_p,
    holm,
    interval,
    machine_class,
    p_value,
)
from intraq.pipeline import case_hash
from intraq.tables import INTRAQ_BASE, Claim, all_tables, cell_config, get_table, jobs, scaled_amount

GREATER = Claim("g", "t", "a beats b", "greater", (("a", "b"),))
NO_GAIN = Claim("n", "t", "a adds nothing over b", "no_gain", (("a", "b"),), 0.5)
ORDER = Claim("o", "t", "a ≥ b ≥ c", "ordering", (("a", "b"), ("b", "c")), 0.5)
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "device": "cuda", "processor": "x86_64", "cpu_count": 16, "torch": "2.11.0"}
CPU = {"gpu": None, "device": "cpu", "processor": "x86_64", "cpu_count": 2, "torch": "2.14.1"}


def seeded(values: list[float], machine: str = "m") -> Sample:
    return Sample(tuple(values), tuple(range(len(values))), (machine,) * len(values))


def test_summary_uses_sample_std() -> None:
    s = Summary.of([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert Summary.of([5.0]).std == 0.0 and math.isnan(Summary.of([]).mean)


# ----------------------------------------------------------------- formulas pinned on small, hand-computed numbers


def test_paired_interval_by_hand() -> None:
    # d = (2, 3, 4): mean 3, sd 1, se = 1/sqrt(3); t(0.95, df 2) = 2.919986 -> 3 ± 1.685854
    ci = interval([3.0, 5.0, 7.0], [1.0, 2.0, 3.0], PAIRED)
    assert (ci.kind, ci.diff, ci.df, ci.n) == (PAIRED, pytest.approx(3.0), 2.0, 3)
    assert (ci.low, ci.high) == (pytest.approx(1.314146, abs=1e-6), pytest.approx(4.685854, abs=1e-6))


def test_welch_interval_by_hand() -> None:
    # variances 1 and 1, n 3 and 3: se^2 = 2/3, df = (2/3)^2 / (2 (1/3)^2 / 2) = 4; t(0.95, 4) = 2.131847,
    # half-width 2.131847 * sqrt(2/3) = 1.740646
    ci = interval([1.0, 2.0, 3.0], [3.0, 4.0, 5.0], WELCH)
    assert ci.df == pytest.approx(4.0) and ci.diff == pytest.approx(-2.0)
    assert (ci.low, ci.high) == (pytest.approx(-3.740646, abs=1e-6), pytest.approx(-0.259354, abs=1e-6))
    # unequal variances: df = (1/3 + 4/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    assert interval([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], WELCH).df == pytest.approx(50 / 17)


def test_one_sided_p_by_hand() -> None:
    # paired d = (2, 3, 4) against 2.5: t = 0.5 / (1/sqrt 3) = 0.866025, df 2, where the t CDF is
    # 1/2 + t / (2 sqrt(t^2 + 2)) = 0.761116, so p(d > 2.5) = 0.238884 and p(d < 2.5) = 0.761116
    a, b = [3.0, 5.0, 7.0], [1.0, 2.0, 3.0]
    assert p_value(a, b, PAIRED, 2.5, "greater") == pytest.approx(0.238884, abs=1e-6)
    assert p_value(a, b, PAIRED, 2.5, "less") == pytest.approx(0.761116, abs=1e-6)
    assert p_value([2.0, 2.0], [1.0, 1.0], WELCH, 0.0, "greater") == 0.0  # no spread: decided exactly
    assert p_value([2.0, 2.0], [1.0, 1.0], WELCH, 1.0, "greater") == 1.0


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.01, math.nan])
    assert adjusted[0] == pytest.approx(0.01) and math.isnan(adjusted[1])  # untested pairs do not count


def test_holm_can_turn_a_pair_inconclusive() -> None:
    # each pair alone is decided (one-sided p < 0.05), but p = 0.04 twice becomes 0.08 after Holm
    values = {"a": [1.0, 2.0, 3.0], "b": [0.0, 0.3, 0.6], "c": [1.0, 2.0, 3.0], "d": [0.0, 0.3, 0.6]}
    p = p_value(values["a"], values["b"], PAIRED, 0.0, "greater")
    alone = check_pair("a", "b", "greater", 0.0, {k: seeded(v) for k, v in values.items()})
    both = check_pairs([("a", "b"), ("c", "d")], "greater", 0.0, {k: seeded(v) for k, v in values.items()})
    assert p < 0.05 < 2 * p
    assert alone.verdict == HOLDS and [t.verdict for t in both] == [INCONCLUSIVE, INCONCLUSIVE]
    assert both[0].p_holds == pytest.approx(2 * p) and "Holm over 2 pairs" in both[0].reason


def test_paired_when_same_seeds_welch_otherwise() -> None:
    a, b = [70.1, 71.3, 70.6], [69.0, 70.2, 68.7]
    paired = check_pair("a", "b", "greater", 0.0, {"a": seeded(a), "b": seeded(b)})
    assert paired.interval_kind == PAIRED and paired.reason.startswith("paired 90% CI")
    assert (paired.ci_low, paired.ci_high) == pytest.approx(tuple(stats.ttest_rel(a, b).confidence_interval(0.9)))
    other_seeds = Sample(tuple(b), (0, 1, 5), ("m",) * 3)
    welch = check_pair("a", "b", "greater", 0.0, {"a": seeded(a), "b": other_seeds})
    assert welch.interval_kind == WELCH and welch.reason.startswith("Welch 90% CI")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert (welch.ci_low, welch.ci_high) == pytest.approx((ci.low, ci.high))
    assert check_pair("a", "b", "greater", 0.0, {"a": a, "b": b}).interval_kind == WELCH  # seeds unknown


def test_machine_class_from_the_record() -> None:
    assert machine_class(H100) == "NVIDIA H100 80GB HBM3, torch 2.11.0"
    assert machine_class(CPU) == "CPU x86_64, 2 cores, torch 2.14.1"
    assert machine_class(dict(CPU, torch="2.11.0")) != machine_class(CPU)  # the torch version is part of it
    assert machine_class(dict(CPU, torch_threads=2)) == machine_class(CPU)
    # the vector ISA torch dispatches to changes speed 3x and the float rounding: AVX2 and AVX-512 runs differ
    assert machine_class(dict(CPU, cpu_capability="AVX2")) == "CPU x86_64 AVX2, 2 cores, torch 2.14.1"
    assert machine_class(dict(CPU, cpu_capability="AVX512")) != machine_class(dict(CPU, cpu_capability="AVX2"))
    assert machine_class(None) == "unknown machine"


def test_machines_differ_is_never_decided() -> None:
    far_apart = {"a": seeded([90.0, 90.1, 90.2], machine_class(H100)),
                 "b": seeded([60.0, 60.1, 60.2], machine_class(CPU))}
    pair = check_pair("a", "b", "greater", 0.0, far_apart)
    assert pair.verdict == NOT_COMPARABLE == "not comparable (machines differ)"
    assert "NVIDIA H100" in pair.machines and "CPU x86_64" in pair.machines and pair.diff == pytest.approx(30.0)
    mixed_cell = Sample((90.0, 90.1, 90.2), (0, 1, 2), (machine_class(H100),) * 2 + (machine_class(CPU),))
    assert check_pair("a", "b", "greater", 0.0, {"a": mixed_cell, "b": mixed_cell}).verdict == NOT_COMPARABLE
    assert evaluate_claim(GREATER, far_apart).verdict == NOT_COMPARABLE


def test_non_inferiority_with_the_strict_test_beside_it() -> None:
    # a is 0.1 below b with little noise: no worse than b by half a point (holds), not strictly greater (fails)
    values = {"a": seeded([80.0, 80.1, 80.2]), "b": seeded([80.1, 80.2, 80.3]), "c": seeded([70.0, 70.1, 70.3])}
    result = evaluate_claim(ORDER, values)
    assert result.verdict == HOLDS and result.strict_verdict == FAILS
    assert [p.threshold for p in result.pairs] == [-0.5, -0.5]
    assert result.pairs[0].strict is not None and result.pairs[0].strict.verdict == FAILS
    assert "non-inferiority" in result.test and "Holm" in result.test
    worse = dict(values, a=seeded([78.0, 78.1, 78.2]))
    assert evaluate_claim(ORDER, worse).verdict == FAILS


def test_verdict_text_and_numbers_share_their_rounding() -> None:
    assert fmt_apart(0.4987, 0.5) == "+0.499" and fmt_apart(0.46, 0.5) == "+0.46"
    assert fmt_apart(-1.114, 0.5) == "-1.11" and fmt_apart(0.5, 0.5) == "+0.50"
    assert fmt_p(0.04996) == "0.04996" and fmt_p(0.0512) == "0.051"
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(0.2) == "0.200"
    # an interval whose end rounds to the threshold is printed with the digits that tell them apart
    pair = check_pair("a", "b", "no_gain", 0.5, {"a": seeded([0.0, 0.2, 0.9]), "b": seeded([0.0, 0.0, 0.0])})
    shown = pair.reason.split("= [")[1].split("]")[0].split(", ")
    for text, value in zip(shown, (pair.ci_low, pair.ci_high), strict=True):
        assert text != "+0.50" or value == 0.5


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
    assert evaluate_claim(GREATER, {"a": seeded(a), "b": seeded(b)}).verdict == verdict


def test_inconclusive_and_missing_reasons_are_given() -> None:
    one = evaluate_claim(GREATER, {"a": [70.0], "b": [60.0, 61.0]}).pairs[0]
    assert "fewer than 2" in one.reason and one.diff == pytest.approx(9.5)
    missing = evaluate_claim(GREATER, {"a": [70.0, 71.0]})
    assert missing.verdict == NO_RESULTS and missing.pairs[0].verdict == NO_RESULTS
    assert "no results for b" in missing.pairs[0].reason
    assert evaluate_claim(ORDER, {"a": [1.0, 2.0], "b": [1.0, 2.0]}).verdict != NO_RESULTS  # one pair has results


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
    assert check_pair("a", "b", "greater", 0.0, {"a": seeded([2.0, 3.0]), "b": seeded([1.0, 2.0])}).verdict == HOLDS


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
    # 29 cells: the W4A4 IntraQ cell in 5 tables, the W3A3 one in 3, and the two calibrated-on-real rows, which
    # are one case where the profile's stage-2 lr is already the official 1e-4 (smoke)
    assert len(found) == 2 * (29 - 4 - 2 - 1)
    assert sum(1 for j in found if len(j.cells) == 5) == 2
    w3a3 = {case_hash(cell_config(get_table(t).cell(c), "smoke", 0)) for t, c in
            [("main_cifar10", "w3a3"), ("mdc_vs_adi", "mdc_w3a3"), ("comparison", "intraq_w3a3")]}
    assert len(w3a3) == 1


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
    comparison = get_table("comparison")
    methods = [cell_config(comparison.cell(k), "smoke").synth.method for k in ("real", "qimera", "squant", "intraq")]
    assert methods == ["real", "qimera", "squant", "intraq"]
    assert cell_config(comparison.cell("squant_lineage"), "smoke").squant.protocol == "lineage"
    assert cell_config(comparison.cell("real_calib"), "smoke").finetune.calib_source == "train"
    real_lr = cell_config(comparison.cell("real_official_lr"), "cifar10-cpu")
    assert (real_lr.finetune.lr, real_lr.finetune.calib_source) == (1e-4, "train")
    w3a3 = cell_config(comparison.cell("qimera_w3a3"), "smoke")
    assert (w3a3.quant.weight_bits, w3a3.quant.act_bits, w3a3.synth.method) == (3, 3, "qimera")
    assert "synth.variant=paper" in INTRAQ_BASE and "synth.lor=L+F" in INTRAQ_BASE
