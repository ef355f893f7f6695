"""Verdicts on the paper's claims from per-seed accuracies: holds, fails, inconclusive, no results, or not
comparable (machines differ).

Every claim is a set of pairs (a, b) of table cells; for each pair we estimate δ = a − b in accuracy points.

**Like for like first.** A pair is compared only when every run of both cells ran on one *machine class*
(`machine_class`: the GPU's name for a CUDA run, "CPU <processor> <vector ISA>, <n> cores" otherwise, plus the
torch version, all read from the record's `machine` field; records from before the ISA was recorded name none).
Floating-point reductions differ between devices and torch builds and GDFQ's calibration amplifies that by about
one seed's spread, so a pair whose cells ran on different machine classes is never decided: its verdict is "not
comparable (machines differ)", naming the machines.

**Interval.** Paired when both cells ran the same seeds (same seed = same seed-derived randomness, e.g. the GDFQ
calibration generator): the t interval of the per-seed differences, `scipy.stats.ttest_rel(a, b)
.confidence_interval`. Welch otherwise (`scipy.stats.ttest_ind(a, b, equal_var=False)`). Each pair says which.
The interval is two-sided at 1 − 2·alpha (90% with alpha = 0.05), i.e. each of its ends is a one-sided 5% test.

**Tests.** Each pair is tested one-sided in both directions against its threshold (p-values from the same
scipy tests, b shifted by the threshold). The p-values of one direction are Holm-corrected across the testable
pairs of the claim (step-down: sorted ascending, the j-th of k is multiplied by k − j + 1, running maximum,
capped at 1); a direction is established when its Holm-adjusted p < alpha. With one pair this is exactly "the
90% interval lies above (below) the threshold".

Pair rules (margin m in points, the suite's, set per claim in `intraq.tables` before any run):

- greater ("a beats b"):              holds if δ > m is established; fails if δ < m is.
- no_gain ("a adds < m over b"):      holds if δ < m is established; fails if δ > m is.
- at_least ("a ≥ b", non-inferiority): holds if δ > −m is established; fails if δ < −m is. The strict test
  (greater with m = 0, Holm-corrected on its own) is shown beside it.
- ordering ("a ≥ b ≥ c ..."):         each adjacent pair is an at_least pair with the claim's margin.

A pair with no result on a side says "no results"; fewer than two seeds (two pairs when paired) on a side is
inconclusive (no noise estimate). A claim fails if any pair fails; holds if all pairs hold; says "no results"
if no pair has results; "not comparable (machines differ)" if a pair is; otherwise inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from intraq.tables import Claim

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
NO_RESULTS, NOT_COMPARABLE = "no results", "not comparable (machines differ)"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NO_RESULTS, NOT_COMPARABLE)
ALPHA = 0.05
KINDS = ("greater", "no_gain", "at_least", "ordering")
PAIRED, WELCH = "paired", "Welch"
UNKNOWN_MACHINE = "unknown machine"


def machine_class(machine: Mapping[str, Any] | None) -> str:
    """The machine class of a run, from its record's `machine` field: "<GPU name>, torch <v>" for a CUDA run,
    "CPU <processor> <ISA>, <n> cores, torch <v>" otherwise (the ISA torch's kernels use, e.g. AVX2 or AVX512,
    where the record has it). Runs of one class are compared; other classes are not."""
    if not machine:
        return UNKNOWN_MACHINE
    torch_version = machine.get("torch", "?")
    device = str(machine.get("device", ""))
    if device.startswith("cuda") or machine.get("gpu"):
        return f"{machine.get('gpu') or 'CUDA GPU'}, torch {torch_version}"
    cores = machine.get("cpu_count")
    isa = f" {machine['cpu_capability']}" if machine.get("cpu_capability") else ""
    return f"CPU {machine.get('processor') or '?'}{isa}{f', {cores} cores' if cores else ''}, torch {torch_version}"


@dataclass(frozen=True)
class Sample:
    """One cell's per-seed values, with the seed and machine class of each value when known."""

    values: tuple[float, ...]
    seeds: tuple[int, ...] | None = None
    machines: tuple[str, ...] | None = None

    @classmethod
    def of(cls, values: Sample | Sequence[float]) -> Sample:
        return values if isinstance(values, Sample) else cls(tuple(float(v) for v in values))

    @property
    def n(self) -> int:
        return len(self.values)

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds or (), self.values, strict=True))


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
class Interval:
    """δ = a − b with its two-sided (1 − 2·alpha) interval and the one-sided p-values against a threshold t."""

    kind: str  # PAIRED or WELCH
    diff: float
    low: float
    high: float
    df: float
    n: int  # per-seed differences (paired) or the smaller side (Welch)


def _zero_se(a: np.ndarray, b: np.ndarray, kind: str) -> bool:
    """No spread at all, up to float rounding of the inputs (91.1 − 80.1 vs 91.0 − 80.0 differ in the 14th digit)."""
    tol = 1e-9 * max(1.0, float(np.max(np.abs(np.concatenate([a, b])))))
    if kind == PAIRED:
        return bool(np.ptp(a - b) <= tol)
    return bool(np.ptp(a) <= tol and np.ptp(b) <= tol)


def interval(a: Sequence[float], b: Sequence[float], kind: str, alpha: float = ALPHA) -> Interval:
    """The paired (`ttest_rel`, a and b aligned by seed) or Welch (`ttest_ind`, unequal variances) interval of
    a − b at confidence 1 − 2·alpha; exact (zero width) when there is no spread at all."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(np.mean(x - y)) if kind == PAIRED else float(x.mean() - y.mean())
    n = len(x) if kind == PAIRED else min(len(x), len(y))
    if _zero_se(x, y, kind):
        return Interval(kind, diff, diff, diff, math.inf, n)
    res = stats.ttest_rel(x, y) if kind == PAIRED else stats.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(confidence_level=1.0 - 2.0 * alpha)
    return Interval(kind, diff, float(ci.low), float(ci.high), float(res.df), n)


def p_value(a: Sequence[float], b: Sequence[float], kind: str, threshold: float, direction: str) -> float:
    """One-sided p of "a − b > threshold" (direction "greater") or "< threshold" ("less"), from the same test
    as `interval` with b shifted by the threshold; 0 or 1 when there is no spread at all."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float) + threshold
    if _zero_se(x, y, kind):
        d = float(np.mean(x - y)) if kind == PAIRED else float(x.mean() - y.mean())
        return 0.0 if (d > 0 if direction == "greater" else d < 0) else 1.0
    if kind == PAIRED:
        return float(stats.ttest_rel(x, y, alternative=direction).pvalue)
    return float(stats.ttest_ind(x, y, equal_var=False, alternative=direction).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): sort ascending, multiply the j-th (1-based) of
    k by k − j + 1, take the running maximum, cap at 1. NaNs (untested pairs) stay NaN and do not count in k."""
    tested = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    k, running = len(tested), 0.0
    for j, (p, i) in enumerate(sorted(tested), start=1):
        running = max(running, min(1.0, (k - j + 1) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class PairTest:
    """One (a, b) comparison of a claim: the numbers, the interval, the tests and the rule's outcome."""

    a: str
    b: str
    rule: str
    margin: float  # the suite's margin of the claim (points)
    threshold: float  # what δ is tested against: m for greater / no_gain, −m for at_least
    a_summary: Summary
    b_summary: Summary
    diff: float
    ci_low: float
    ci_high: float
    df: float
    verdict: str
    reason: str
    interval_kind: str = ""  # PAIRED, WELCH, or "" when no interval was computed
    n: int = 0  # seeds behind the interval (per-seed differences when paired)
    machines: str = ""  # the machine class(es) of both cells' runs, in words
    machine_classes: tuple[str, ...] = ()  # the distinct machine classes of both cells' runs, sorted
    p_holds: float = math.nan  # Holm-adjusted one-sided p of the direction that makes the pair hold
    p_fails: float = math.nan
    strict: PairTest | None = None  # the strict (greater, m = 0) test beside a non-inferiority test

    @property
    def decided(self) -> bool:
        return self.verdict in (HOLDS, FAILS)


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's verdict on one metric, with every pair behind it and the test in words."""

    claim: Claim
    metric: str
    verdict: str
    pairs: tuple[PairTest, ...]
    test: str
    strict_verdict: str | None = None  # for "≥" claims: the verdict of the strict ">" test


def fmt_apart(value: float, other: float, digits: int = 2, signed: bool = True, most: int = 6) -> str:
    """`value` with at least `digits` decimals and more if needed to differ from `other` at the same rounding,
    so that text such as "lies below +0.50" never sits next to a bound shown as +0.50."""
    spec = "+" if signed else ""
    for d in range(digits, most + 1):
        shown = f"{value:{spec}.{d}f}"
        if shown != f"{other:{spec}.{d}f}" or value == other:
            return shown
    return f"{value:{spec}.{most}f}"


def fmt_p(p: float, alpha: float = ALPHA) -> str:
    """A p-value at 3 decimals, more when needed to read correctly against alpha; tiny ones as "< 0.001"."""
    if math.isnan(p):
        return "–"
    if p < 0.001:
        return "< 0.001"
    return fmt_apart(p, alpha, 3, signed=False)


def _rule_parts(rule: str, margin: float) -> tuple[float, str, str]:
    """(threshold, direction that makes the pair hold, direction that makes it fail)."""
    if rule == "greater":
        return margin, "greater", "less"
    if rule == "no_gain":
        return margin, "less", "greater"
    if rule == "at_least":
        return -margin, "greater", "less"
    raise ValueError(f"unknown pair rule {rule!r}; known: greater, no_gain, at_least")


def _machines_text(a: str, b: str, sa: Sample, sb: Sample) -> tuple[str, bool]:
    """(text naming the machine classes of both cells, whether they are all one class)."""
    ma, mb = set(sa.machines or ()), set(sb.machines or ())
    if len(ma | mb) <= 1:
        return (next(iter(ma | mb)) if ma | mb else ""), True
    return f"{a} on {' + '.join(sorted(ma))}; {b} on {' + '.join(sorted(mb))}", False


@dataclass(frozen=True)
class _Prepared:
    """A pair before the multiplicity correction: either final (no test possible) or with its raw p-values."""

    test: PairTest
    a_values: tuple[float, ...] = ()
    b_values: tuple[float, ...] = ()
    p_holds_raw: float = math.nan
    p_fails_raw: float = math.nan


def _prepare(a: str, b: str, rule: str, margin: float, values: Mapping[str, Sample | Sequence[float]],
             alpha: float) -> _Prepared:
    threshold, holds_dir, fails_dir = _rule_parts(rule, margin)
    sa, sb = Sample.of(values.get(a, ())), Sample.of(values.get(b, ()))
    suma, sumb = Summary.of(sa.values), Summary.of(sb.values)
    base = PairTest(a, b, rule, margin, threshold, suma, sumb, math.nan, math.nan, math.nan, math.nan, "", "")
    if sa.n == 0 or sb.n == 0:
        missing = " and ".join(k for k, s in ((a, sa), (b, sb)) if s.n == 0)
        return _Prepared(replace(base, verdict=NO_RESULTS, reason=f"no results for {missing}"))
    diff = suma.mean - sumb.mean
    machines, same = _machines_text(a, b, sa, sb)
    classes = tuple(sorted(set(sa.machines or ()) | set(sb.machines or ())))
    base = replace(base, diff=diff, machines=machines, machine_classes=classes)
    if not same:
        return _Prepared(replace(base, verdict=NOT_COMPARABLE,
                                 reason=f"not decided: the cells ran on different machine classes ({machines}); "
                                 "re-run both on one class"))
    paired = (sa.seeds is not None and sb.seeds is not None and len(set(sa.seeds)) == sa.n
              and len(set(sb.seeds)) == sb.n and set(sa.seeds) == set(sb.seeds))
    if paired:
        order = sorted(sa.seeds or ())
        x = tuple(sa.by_seed()[s] for s in order)
        y = tuple(sb.by_seed()[s] for s in order)
    else:
        x, y = sa.values, sb.values
    if min(len(x), len(y)) < 2:
        return _Prepared(replace(base, verdict=INCONCLUSIVE,
                                 reason=f"n = {sa.n} vs {sb.n} seeds: fewer than 2 on a side, no noise estimate"))
    kind = PAIRED if paired else WELCH
    ci = interval(x, y, kind, alpha)
    test = replace(base, diff=ci.diff, ci_low=ci.low, ci_high=ci.high, df=ci.df, interval_kind=kind, n=ci.n)
    return _Prepared(test, x, y, p_value(x, y, kind, threshold, holds_dir), p_value(x, y, kind, threshold, fails_dir))


def _decide(prepared: Sequence[_Prepared], alpha: float) -> list[PairTest]:
    """Holm across the testable pairs, per direction; then each pair's verdict and its reason in words."""
    holds_adj = holm([p.p_holds_raw for p in prepared])
    fails_adj = holm([p.p_fails_raw for p in prepared])
    k = sum(1 for p in prepared if not math.isnan(p.p_holds_raw))
    out = []
    for prep, ph, pf in zip(prepared, holds_adj, fails_adj, strict=True):
        t = prep.test
        if math.isnan(prep.p_holds_raw):
            out.append(t)
            continue
        _, holds_dir, _ = _rule_parts(t.rule, t.margin)
        above, below = f"a − b > {t.threshold:+.2f}", f"a − b < {t.threshold:+.2f}"
        holds_h, fails_h = (above, below) if holds_dir == "greater" else (below, above)
        lo, hi = fmt_apart(t.ci_low, t.threshold), fmt_apart(t.ci_high, t.threshold)
        level = f"{100 * (1 - 2 * alpha):.0f}%"
        ci = f"{t.interval_kind} {level} CI of {t.a} − {t.b} = [{lo}, {hi}] (n = {t.n})"
        holm_text = f"Holm over {k} pairs, " if k > 1 else ""
        if ph < alpha:
            verdict, why = HOLDS, f"{holds_h} established ({holm_text}p = {fmt_p(ph, alpha)} < {alpha:g})"
        elif pf < alpha:
            verdict, why = FAILS, f"{fails_h} established ({holm_text}p = {fmt_p(pf, alpha)} < {alpha:g})"
        else:
            verdict = INCONCLUSIVE
            why = (f"neither direction established ({holm_text}p = {fmt_p(ph, alpha)} for {holds_h}, "
                   f"{fmt_p(pf, alpha)} for {fails_h})")
        out.append(replace(t, verdict=verdict, reason=f"{ci}; {why}", p_holds=ph, p_fails=pf))
    return out


def check_pairs(pairs: Sequence[tuple[str, str]], rule: str, margin: float,
                values: Mapping[str, Sample | Sequence[float]], alpha: float = ALPHA) -> list[PairTest]:
    """Test every pair of one claim under `rule`, Holm-corrected across them (see the module docstring)."""
    return _decide([_prepare(a, b, rule, margin, values, alpha) for a, b in pairs], alpha)


def check_pair(a: str, b: str, rule: str, margin: float, values: Mapping[str, Sample | Sequence[float]],
               alpha: float = ALPHA) -> PairTest:
    """One pair on its own (no multiplicity correction needed)."""
    return check_pairs([(a, b)], rule, margin, values, alpha)[0]


def combine(verdicts: Sequence[str]) -> str:
    """Any pair fails -> fails; all hold -> holds; none has results -> no results; a pair not comparable ->
    not comparable; otherwise inconclusive."""
    if any(v == FAILS for v in verdicts):
        return FAILS
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if verdicts and all(v == NO_RESULTS for v in verdicts):
        return NO_RESULTS
    if any(v == NOT_COMPARABLE for v in verdicts):
        return NOT_COMPARABLE
    return INCONCLUSIVE


def pair_rule(claim: Claim) -> str:
    if claim.kind not in KINDS:
        raise ValueError(f"unknown claim kind {claim.kind!r}; known: {', '.join(KINDS)}")
    return "at_least" if claim.kind == "ordering" else claim.kind


def describe_test(claim: Claim, alpha: float = ALPHA) -> str:
    """The claim's test in words, for the report."""
    rule = pair_rule(claim)
    level = f"{100 * (1 - 2 * alpha):.0f}%"
    pairs = ", ".join(f"{a} − {b}" for a, b in claim.pairs)
    holm_text = (f" p-values Holm-corrected across the claim's {len(claim.pairs)} pairs (per direction);"
                 if len(claim.pairs) > 1 else "")
    lead = (f"Per pair ({pairs}): {level} interval of a − b, paired by seed when both cells ran the same seeds, "
            f"Welch otherwise; one-sided tests at {alpha:g};{holm_text} pairs whose cells ran on different machine "
            "classes are not decided.")
    why = f" Margin {claim.margin:.2f} points: the suite's, fixed before any run ({claim.why_margin})." \
        if claim.why_margin else ""
    m = f"{claim.margin:+.2f}"
    if rule == "greater":
        return f"{lead} Holds if a − b > {m} is established for every pair, fails if a − b < {m} is for one.{why}"
    if rule == "no_gain":
        return f"{lead} Holds if a − b < {m} is established for every pair, fails if a − b > {m} is for one.{why}"
    neg = f"{-claim.margin:+.2f}"
    return (f"{lead} '≥' as non-inferiority: holds if a − b > {neg} is established for every pair, fails if "
            f"a − b < {neg} is for one.{why} The strict test (a − b > 0, Holm on its own) is shown beside it.")


def evaluate_claim(claim: Claim, values: Mapping[str, Sample | Sequence[float]], metric: str = "best_epoch",
                   alpha: float = ALPHA) -> ClaimVerdict:
    """Verdict on `claim` from `values` (cell key -> per-seed values of `metric`, a `Sample` when seeds and
    machine classes are known)."""
    rule = pair_rule(claim)
    margin = claim.margin
    pairs = check_pairs(claim.pairs, rule, margin, values, alpha)
    strict_verdict = None
    if rule == "at_least":
        strict = check_pairs(claim.pairs, "greater", 0.0, values, alpha)
        pairs = [replace(p, strict=s) for p, s in zip(pairs, strict, strict=True)]
        strict_verdict = combine([s.verdict for s in strict])
    return ClaimVerdict(claim, metric, combine([p.verdict for p in pairs]), tuple(pairs),
                        describe_test(claim, alpha), strict_verdict)
