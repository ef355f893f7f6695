"""Verdicts on the paper's claims from per-seed accuracies: holds, fails, or inconclusive within the seed noise.

Every claim is a set of pairs (a, b) of table cells; for each pair we look at d = mean(a) - mean(b) in accuracy
points, with a Welch confidence interval [lo, hi] = d ± t(1 - alpha, df) · se, where se² = s_a²/n_a + s_b²/n_b
(sample std over seeds) and df is Welch–Satterthwaite's. With the default alpha = 0.05 that is a 90% two-sided
interval, i.e. a one-sided 5% test in each direction. Seeds are treated as independent samples (Welch, unpaired):
the same seed in two cells shares nothing but the teacher.

Pair rules (margin m in points, set per claim in `intraq.tables` before any run):

- greater ("a beats b"):           holds if lo > m;   fails if hi < m;   otherwise inconclusive.
- no_gain ("a adds < m over b"):   holds if hi < m;   fails if lo > m;   otherwise inconclusive.
- ordering ("a > b > c ..."):      each adjacent pair is a `greater` with m = 0.

A pair with fewer than two seeds on either side is inconclusive (no noise estimate), and so is a pair whose
cell has no result. A claim holds if all its pairs hold, fails if any pair fails, and is inconclusive otherwise.
No correction for several pairs is applied; the report shows every pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

from intraq.tables import Claim

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
ALPHA = 0.05
KINDS = ("greater", "no_gain", "ordering")


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof 1; 0 for one value) and count of one cell's per-seed values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(mean, math.sqrt(var), n)


@dataclass(frozen=True)
class PairTest:
    """One (a, b) comparison of a claim: the numbers, the interval and the rule's outcome."""

    a: str
    b: str
    rule: str
    margin: float
    a_summary: Summary
    b_summary: Summary
    diff: float
    ci_low: float
    ci_high: float
    df: float
    verdict: str
    reason: str


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's verdict on one accuracy metric, with every pair behind it and the test in words."""

    claim: Claim
    metric: str
    verdict: str
    pairs: tuple[PairTest, ...]
    test: str


def welch_interval(a: Summary, b: Summary, alpha: float = ALPHA) -> tuple[float, float, float, float]:
    """(d, lo, hi, df) for d = mean(a) - mean(b); the interval is exact (zero width) when both stds are 0."""
    d = a.mean - b.mean
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se2 = va + vb
    if se2 == 0.0:
        return d, d, d, math.inf
    df = se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = float(stats.t.ppf(1.0 - alpha, df)) * math.sqrt(se2)
    return d, d - half, d + half, df


def check_pair(a: str, b: str, rule: str, margin: float, values: Mapping[str, Sequence[float]],
              alpha: float = ALPHA) -> PairTest:
    """Apply `rule` (greater | no_gain) to cells a and b; see the module docstring for the rules."""
    sa, sb = Summary.of(list(values.get(a, ()))), Summary.of(list(values.get(b, ())))
    if sa.n == 0 or sb.n == 0:
        missing = ", ".join(k for k, s in ((a, sa), (b, sb)) if s.n == 0)
        return PairTest(a, b, rule, margin, sa, sb, math.nan, math.nan, math.nan, math.nan, INCONCLUSIVE,
                        f"no results for {missing}")
    d, lo, hi, df = welch_interval(sa, sb, alpha) if min(sa.n, sb.n) >= 2 else (sa.mean - sb.mean, *[math.nan] * 3)
    if min(sa.n, sb.n) < 2:
        return PairTest(a, b, rule, margin, sa, sb, d, lo, hi, df, INCONCLUSIVE,
                        f"n = {sa.n} vs {sb.n} seeds: fewer than 2 on a side, no noise estimate")
    ci = f"{100 * (1 - 2 * alpha):.0f}% CI of {a} − {b} = [{lo:+.2f}, {hi:+.2f}]"
    if rule == "greater":
        if lo > margin:
            return PairTest(a, b, rule, margin, sa, sb, d, lo, hi, df, HOLDS, f"{ci} lies above {margin:+.2f}")
        if hi < margin:
            return PairTest(a, b, rule, margin, sa, sb, d, lo, hi, df, FAILS, f"{ci} lies below {margin:+.2f}")
        return PairTest(a, b, rule, margin, sa, sb, d, lo, hi, df, INCONCLUSIVE, f"{ci} contains {margin:+.2f}")
    if rule == "no_gain":
        if hi < margin:
            return PairTest(a, b, rule, margin, sa, sb, d, lo, hi, df, HOLDS, f"{ci} lies below {margin:+.2f}")
        if lo > margin:
            return PairTest(a, b, rule, margin, sa, sb, d, lo, hi, df, FAILS, f"{ci} lies above {margin:+.2f}")
        return PairTest(a, b, rule, margin, sa, sb, d, lo, hi, df, INCONCLUSIVE, f"{ci} contains {margin:+.2f}")
    raise ValueError(f"unknown pair rule {rule!r}; known: greater, no_gain")


def describe_test(claim: Claim, alpha: float = ALPHA) -> str:
    """The claim's test in one sentence, for the report."""
    ci = f"Welch {100 * (1 - 2 * alpha):.0f}% CI of the difference of seed means"
    pairs = ", ".join(f"{a} − {b}" for a, b in claim.pairs)
    if claim.kind in ("greater", "ordering"):
        return f"{ci} ({pairs}): holds if every interval lies above {claim.margin:+.2f}, fails if one lies below."
    if claim.kind == "no_gain":
        return (f"{ci} ({pairs}): holds if every interval lies below {claim.margin:+.2f} points, fails if one "
                f"lies above ({claim.why_margin}).")
    raise ValueError(f"unknown claim kind {claim.kind!r}; known: {', '.join(KINDS)}")


def combine(verdicts: Sequence[str]) -> str:
    """All pairs hold -> holds; any pair fails -> fails; otherwise inconclusive."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return INCONCLUSIVE


def evaluate_claim(claim: Claim, values: Mapping[str, Sequence[float]], metric: str = "best_epoch",
                   alpha: float = ALPHA) -> ClaimVerdict:
    """Verdict on `claim` from `values` (cell key -> per-seed accuracies in % of the chosen `metric`)."""
    if claim.kind not in KINDS:
        raise ValueError(f"unknown claim kind {claim.kind!r}; known: {', '.join(KINDS)}")
    rule = "no_gain" if claim.kind == "no_gain" else "greater"
    margin = claim.margin if claim.kind != "ordering" else 0.0
    pairs = tuple(check_pair(a, b, rule, margin, values, alpha) for a, b in claim.pairs)
    return ClaimVerdict(claim, metric, combine([p.verdict for p in pairs]), pairs, describe_test(claim, alpha))
