"""The report as a list of blocks, rendered twice: markdown (figures as PNG files beside it) and one
self-contained HTML page (figures inlined as base64 PNG). Reads results/ only; computes nothing but statistics."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from intraq.claims import (
    NO_RESULTS,
    NOT_COMPARABLE,
    VERDICTS,
    ClaimVerdict,
    PairTest,
    Sample,
    evaluate_claim,
    fmt_apart,
)
from intraq.report import figures as figs
from intraq.report.curves import Curve, curves_beside, curves_outside_grid
from intraq.report.load import BenchResults, load_results, summarize
from intraq.report.official_runs import official_beside_diverged
from intraq.report.overrides import describe_settings
from intraq.report.stability_probes import sharpness_beside_diverged
from intraq.report.timing import compute_of, describe
from intraq.tables import FIGURE_CLAIM, METRIC_LABELS, PAPER_BASE_IMAGES, Table, all_tables

LEVEL = "90%"  # the claims' two-sided interval (alpha = 0.05 each side)
# (name shown, table, cell) of the image sets whose features the figures show
FIGURE_CELLS = (("MDC (IntraQ)", "mdc_vs_adi", "mdc"), ("ADI", "mdc_vs_adi", "adi"),
                ("Real data", "comparison", "real"))


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    css: str = ""


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class TableBlock:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class FigureBlock:
    name: str  # file name of the PNG beside the markdown
    png: bytes
    caption: str


Block = Heading | Para | Bullets | TableBlock | FigureBlock


@dataclass
class Report:
    profile: str
    blocks: list[Block] = field(default_factory=list)
    verdicts: list[ClaimVerdict] = field(default_factory=list)


def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mean_std_n(mean: float, std: float, n: int, digits: int = 2) -> str:
    if n == 0:
        return "no result"
    if n == 1:
        return f"{fmt(mean, digits)} (n=1)"
    return f"{fmt(mean, digits)} ± {fmt(std, digits)} (n={n})"


def slug(text: str) -> str:
    """GitHub's heading anchor for `text` (lower case, punctuation dropped, spaces to '-'); the HTML uses the same
    ids, so one fragment links into both report.md and report.html."""
    t = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return t.replace(" ", "-")


def claim_heading(text: str) -> str:
    return f"Claim: {text}"


def _profile_line(profile: str) -> str:
    from intraq.profiles import PROFILES

    if profile not in PROFILES:
        return profile
    doc = (PROFILES.get(profile).__doc__ or "").strip().splitlines()
    return f"`{profile}`, {doc[0].rstrip('.')}" if doc else profile


def evidence_text(profile: str) -> str:
    """What the profile's verdicts are worth (its `evidence` in `intraq.profiles`), wherever they are shown."""
    from intraq.profiles import evidence_of

    evidence = evidence_of(profile)
    if evidence is None:
        return (f"evidence: `{profile}` is not one of the suite's profiles (a study of its own); weigh it against "
                "the suite's tiers (`intraq profiles`)")
    return f"evidence ({evidence.tier}): {evidence.says}"


def evidence_tier(profile: str) -> str:
    from intraq.profiles import evidence_of

    evidence = evidence_of(profile)
    return evidence.tier if evidence is not None else "a study's own"


def our_setting(res: BenchResults) -> str:
    """This profile's setting in words: data set, teacher(s) and their accuracy, from the records."""
    rows = res.rows
    teachers = sorted({f"{t} ({a:.2f}% test top-1)" for t, a in zip(rows["teacher_name"], rows["teacher"],
                                                                      strict=True) if a == a})
    datasets = sorted({str(d) for d in rows["dataset"]})
    return f"profile `{res.profile}`: {', '.join(datasets)}, teacher {'; '.join(teachers) or '?'}"


def distinct_runs(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop_duplicates(["case", "seed"])


def compute_text(res: BenchResults, rows: pd.DataFrame) -> str:
    runs = distinct_runs(rows)
    found = compute_of(res.results_dir, res.profile,
                       [(c, int(s), float(t)) for c, s, t in zip(runs["case"], runs["seed"], runs["seconds_total"],
                                                                 strict=True)])
    return describe(found)


def machine_classes_text(rows: pd.DataFrame) -> str:
    """"<class> (k runs); <class> (m runs)" over distinct runs."""
    runs = distinct_runs(rows)
    counts = runs.groupby("machine_class").size()
    return "; ".join(f"{m} ({n} run{'s' if n != 1 else ''})" for m, n in counts.items())


def header_blocks(res: BenchResults) -> list[Block]:
    rows = res.rows
    runs = distinct_runs(rows)
    figure_seconds = sum(float(f.meta.get("seconds", 0.0)) for f in res.figures.values())
    items = []
    if rows["fixture"].any():
        items.append("**FABRICATED TEST FIXTURE: these numbers were made up by the test suite, not measured.**")
    items += [
        f"Profile: {_profile_line(res.profile)}.",
        f"E{evidence_text(res.profile)[1:]}.",  # "evidence: ..." as a sentence
        f"Rendered from the results folder `{Path(res.results_dir) / res.profile}/`.",
        f"Settings: ours = {our_setting(res)}. The paper's values are for the paper's setting, stated above each "
        "table (ResNet-18 on ImageNet for the supplementary's tables, ResNet-20 on CIFAR-10 for the main "
        "setting). Only differences inside one table carry over between settings, so each claim compares the "
        "gap between two rows, ours (mean, interval, n) beside the paper's; no number of ours is subtracted from "
        "one of the paper's.",
        "Machine class = the GPU's name for a CUDA run, otherwise \"CPU <processor>, <n> cores\", plus the torch "
        "version (from each record's `machine` field). Runs: " + machine_classes_text(rows) + ". Details: "
        + "; ".join(sorted(set(rows["machine"]))) + ".",
        f"Compute: {compute_text(res, rows)} (distinct case × seed; shared cells run once), plus "
        f"{figure_seconds / 60:.1f} min of figure-data extraction.",
        f"Seeds: {', '.join(str(s) for s in sorted(set(rows['seed'])))}. "
        f"Commits: {', '.join(sorted({str(c) for c in rows['git_commit']}))}.",
    ]
    from intraq.profiles import PROFILES, code_deviations, get_profile, profile_deviations

    deviations = profile_deviations(res.profile)
    if deviations:
        items.append(
            "Deviations of this profile from the official hyperparameters (`intraq/profiles.py`): "
            + "; ".join(f"`{k}` {v}" for k, v in deviations.items()) + "."
        )
    items.append(
        "Settings beyond the profile's (each record's config against its cell's config at this profile today; "
        "`--set` overrides, a study file's edits and profile changes since a run all show here): "
        + describe_settings(runs["settings_beyond_cell"]) + "."
    )
    identities = sorted({str(i) for i in rows["data_identity"] if isinstance(i, str)})
    if identities:
        unnamed = int(rows["data_identity"].isna().sum())
        items.append(
            "Data (name + content hash, from the records): " + ", ".join(f"`{i}`" for i in identities)
            + (f"; {unnamed} rows come from records made before data identities were stored." if unnamed else ".")
        )
    choices = code_deviations(get_profile(res.profile)) if res.profile in PROFILES else {}
    if choices:
        items.append(
            "Where this profile runs differently from the official code by choice (`CODE_CHOICES` in "
            "`intraq/profiles.py`): " + "; ".join(f"`{k}` {v}" for k, v in choices.items()) + "."
        )
    noted = runs[runs["git_commit_note"].notna()]
    if len(noted):
        counts = noted.groupby("git_commit").size()
        items.append(
            f"Provenance notes: {len(noted)} of {len(runs)} runs carry a `git_commit_note` in their record, added "
            "after the run, that corrects or explains the commit they name ("
            + ", ".join(f"{n} at {commit}" for commit, n in counts.items()) + "); read it in the cell files."
        )
    diverged = runs[runs["diverged_at_epoch"].notna()]
    if len(diverged):
        listed = ", ".join(
            f"{r.table}/{r.cell} seed {r.seed} (epoch {int(r.diverged_at_epoch)})" for r in diverged.itertuples()
        )
        items.append(
            f"Fine-tuning diverged (non-finite KD loss; the run stopped there, its best epoch counts the epochs "
            f"before) in {len(diverged)} of {len(runs)} runs: {listed}."
        )
        runs_with_files = [(f"{r.table}/{r.cell}", int(r.seed), r.result_file) for r in diverged.itertuples()
                           if isinstance(r.result_file, str)]  # cell files from before result_file have none (NaN)
        beside = official_beside_diverged(res.results_dir, res.profile, runs_with_files)
        if beside:
            items.append("The official stage 2 on the same inputs: " + "; ".join(beside) + ".")
        bounds = sharpness_beside_diverged(res.results_dir, res.profile, runs_with_files)
        if bounds:
            items.append("How far from stable: " + "; ".join(bounds) + ".")
    items += [
        "Accuracy columns: " + "; ".join(f"*{k.replace('_', ' ')}* = {v}" for k, v in METRIC_LABELS.items()) + ". "
        "Every `mean ± sd (n=k)`: ± = sample standard deviation (ddof 1) over the n seeds.",
        f"Claims: decided on per-seed best-epoch accuracies (the paper's metric); the final-epoch verdict is shown "
        f"beside it. Per pair, a {LEVEL} interval of the gap a − b: *paired* (per-seed differences, "
        "`scipy.stats.ttest_rel`) when both cells ran the same seeds, *Welch* (`ttest_ind`, unequal variances) "
        "otherwise; each row says which. One-sided tests at 5% in each direction, Holm-corrected across the pairs "
        "of a claim; '≥' claims are tested as non-inferiority with the strict '>' test beside them. A pair whose "
        f"cells ran on different machine classes is never decided (*{NOT_COMPARABLE}*). Margins are the suite's "
        "(not the paper's), fixed before any run. Rules: `intraq/claims.py`.",
        f"Sources: results/{res.profile}/ (cells/, run records, figures-data/); rendered by `intraq report`.",
    ]
    return [Heading(1, f"IntraQ supplementary tables, profile `{res.profile}`"), Bullets(tuple(items))]


def samples(res: BenchResults, table: Table, metric: str) -> dict[str, Sample]:
    """Cell key -> its per-seed values of `metric` with their seeds and machine classes, for `intraq.claims`."""
    out: dict[str, Sample] = {}
    for cell in table.cells:
        rows = res.cell_rows(table.key, cell.key).sort_values("seed")
        rows = rows[rows[metric].notna()]
        out[cell.key] = Sample(tuple(float(v) for v in rows[metric]), tuple(int(s) for s in rows["seed"]),
                               tuple(str(m) for m in rows["machine_class"]))
    return out


def cell_machines(rows: pd.DataFrame) -> str:
    """"<class> (seeds 0, 1); <class> (seed 2)" for one cell's runs; a seed is annotated with its torch thread
    count when the seeds of one class ran at different counts, and with its path when not the reference path,
    so that a cell's spread that includes hardware or implementation spread shows it."""
    if not len(rows):
        return "–"
    parts = []
    for machine, group in rows.sort_values("seed").groupby("machine_class", sort=True):
        mixed_threads = group["threads"].astype(str).nunique() > 1
        seeds = []
        for _, r in group.iterrows():
            threads = "?" if pd.isna(r["threads"]) else int(r["threads"])
            notes = [f"{threads} thread{'' if threads == 1 else 's'}"] if mixed_threads else []
            notes += [f"{r['path']} path"] if r["path"] != "reference" else []
            seeds.append(str(int(r["seed"])) + (f" [{', '.join(notes)}]" if notes else ""))
        parts.append(f"{machine} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})")
    return "; ".join(parts)


def table_setting(table: Table, res: BenchResults) -> str:
    fp = f"; full precision {table.paper_full_precision:.2f}%" if table.paper_full_precision is not None else ""
    return (f"Setting. Paper: {table.paper_setting}{fp} ({table.paper_ref}). Ours: {our_setting(res)}. "
            "The paper's absolute numbers are shown for reference only; compare gaps within the table.")


def table_block(table: Table, summary: pd.DataFrame, res: BenchResults) -> TableBlock:
    rows = summary[summary["table"] == table.key]
    fp = table.paper_full_precision
    columns = ("Row", "Images used", "Paper (%, paper's setting)", "Ours best epoch (%)", "Ours final epoch (%)",
               "Ours after calibration (%)", "Teacher (%)", "Machine class (seeds)", "Case")
    if fp is not None:
        columns = (*columns[:-2], "Paper drop from FP", "Our drop (teacher − best)", *columns[-2:])
    out = []
    for _, r in rows.iterrows():
        row: tuple[str, ...] = (
            r["label"], r["num_images"] or "–", fmt(r["paper_value"]),
            mean_std_n(r["best_epoch_mean"], r["best_epoch_std"], r["best_epoch_n"]),
            mean_std_n(r["final_epoch_mean"], r["final_epoch_std"], r["final_epoch_n"]),
            mean_std_n(r["after_calibration_mean"], r["after_calibration_std"], r["after_calibration_n"]),
            fmt(r["teacher"]),
        )
        if fp is not None:
            row = (*row, fmt(fp - r["paper_value"]), fmt(r["teacher"] - r["best_epoch_mean"]))
        row = (*row, cell_machines(res.cell_rows(table.key, r["cell"])))
        out.append((*row, f"`{r['cases']}`" if r["cases"] else "–"))
    caption = (f"{table.paper_ref}: {table.caption} Ours: mean ± sample standard deviation over the n seeds. "
               "After calibration = activation ranges calibrated, before any fine-tuning.")
    return TableBlock(columns, tuple(out), caption)


def gap_text(p: PairTest, digits: int = 2) -> str:
    """"+0.39 [-0.20, +0.91] (n=3, paired)": the gap with its interval, ends told apart from the threshold."""
    if p.verdict == NO_RESULTS or math.isnan(p.diff):
        return "no results"
    n = min(p.a_summary.n, p.b_summary.n)
    if p.verdict == NOT_COMPARABLE:
        return f"{fmt(p.diff, digits, signed=True)} (n={n}; machines differ, not decided)"
    if not p.interval_kind:
        return f"{fmt(p.diff, digits, signed=True)} (n={n}, no interval)"
    lo = fmt_apart(p.ci_low, p.threshold, digits)
    hi = fmt_apart(p.ci_high, p.threshold, digits)
    return f"{fmt(p.diff, digits, signed=True)} [{lo}, {hi}] (n={p.n}, {p.interval_kind})"


def paper_gap(table: Table | None, p: PairTest) -> str:
    if table is None:
        return "–"
    keys = {c.key for c in table.cells}
    if p.a not in keys or p.b not in keys:
        return "–"
    return fmt(table.cell(p.a).paper.value - table.cell(p.b).paper.value, signed=True)


def verdict_line(best: ClaimVerdict, fin: ClaimVerdict | None) -> str:
    text = f"Verdict (best epoch): **{best.verdict}**"
    if best.strict_verdict is not None:
        text += f" (strict '>' test: **{best.strict_verdict}**)"
    if fin is not None:
        text += f"; final epoch: **{fin.verdict}**"
        if fin.strict_verdict is not None:
            text += f" (strict: **{fin.strict_verdict}**)"
    return text


def claim_blocks(table: Table | None, verdicts: Sequence[ClaimVerdict], final: Sequence[ClaimVerdict | None],
                 digits: int = 2) -> list[Block]:
    """Per claim: a heading (the index links here), the verdicts, the test in words, and one row per pair and
    metric with the paper's gap beside ours."""
    blocks: list[Block] = []
    for best, fin in zip(verdicts, final, strict=True):
        blocks.append(Heading(3, claim_heading(best.claim.text)))
        blocks.append(Para(f"{verdict_line(best, fin)}. Test: {best.test}"))
        rows = []
        for metric, v in (("best epoch", best), ("final epoch", fin)):
            if v is None:
                continue
            for p in v.pairs:
                row = (metric, f"{p.a} − {p.b}", mean_std_n(p.a_summary.mean, p.a_summary.std, p.a_summary.n, digits),
                       mean_std_n(p.b_summary.mean, p.b_summary.std, p.b_summary.n, digits), paper_gap(table, p),
                       gap_text(p, digits), p.machines or "–", fmt(p.threshold, digits, signed=True), p.verdict)
                if best.strict_verdict is not None:
                    row = (*row, p.strict.verdict if p.strict is not None else "–")
                why = p.reason if p.verdict != NOT_COMPARABLE else (
                    "not decided: the cells ran on different machine classes (Machine class column); re-run "
                    "both on one class")
                rows.append((*row, why))
        columns = ("Metric", "Gap a − b", "a: mean ± sd (n)", "b: mean ± sd (n)", "Paper's gap (paper's setting)",
                   f"Our gap [{LEVEL} interval] (n, type)", "Machine class", "Threshold", "Verdict")
        if best.strict_verdict is not None:
            columns = (*columns, "Strict a > b")
        blocks.append(TableBlock((*columns, "Why"), tuple(rows)))
    return blocks


def _method_figure_data(res: BenchResults) -> list[figs.MethodFigureData]:
    out = []
    for name, table, cell in FIGURE_CELLS:
        rows = res.cell_rows(table, cell).sort_values("seed")
        found = [res.figures[k] for k in (f"{c}-seed{s}" for c, s in zip(rows["case"], rows["seed"], strict=True))
                 if k in res.figures]
        if found:
            out.append(figs.MethodFigureData(name, found[0], tuple(f.diversity for f in found)))
    return out


def figure_samples(res: BenchResults) -> dict[str, Sample]:
    """Method name -> per-seed intra-class diversity, with seeds and machine classes of the runs behind them."""
    out: dict[str, Sample] = {}
    for name, table, cell in FIGURE_CELLS:
        rows = res.cell_rows(table, cell).sort_values("seed")
        picked = [(res.figures[f"{r.case}-seed{r.seed}"].diversity, int(r.seed), str(r.machine_class))
                  for r in rows.itertuples() if f"{r.case}-seed{r.seed}" in res.figures]
        if picked:
            out[name] = Sample(*(tuple(x) for x in zip(*picked, strict=True)))
    return out


def figure_verdict(res: BenchResults) -> ClaimVerdict:
    """Figure 1's claim on the measured intra-class diversity, per seed, with the accuracy claims' rules."""
    return evaluate_claim(FIGURE_CLAIM, figure_samples(res), "intra_class_diversity")


def figure_blocks(res: BenchResults, methods: Sequence[figs.MethodFigureData]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Synthetic images and their features (supplementary §1, Figure 1)")]
    if not methods:
        return [*blocks, Para("No figure data in results/ (run the mdc_vs_adi and comparison cases).")]
    blocks.append(FigureBlock(
        "image-grid.png", figs.image_grid_figure(methods),
        "Up to 64 images per method (seed shown in each title), sorted by class label, denormalized and clipped "
        "for display; the sets themselves are float tensors in the teacher's normalized space. Qimera's images "
        "are not kept by its pipeline and SQuant uses none.",
    ))
    blocks.append(FigureBlock(
        "feature-umap.png", figs.feature_scatter_figure(methods),
        "Teacher penultimate features of up to 512 images per method, embedded together (one shared UMAP, cosine "
        "metric, fixed seed); left: by method, then each method by class. The supplementary's Figure 1 shows MDC "
        "and ADI; real images are added where the data set has them.",
    ))
    rows = tuple(
        (m.name, mean_std_n(sum(m.diversities) / len(m.diversities),
                            pd.Series(m.diversities).std(ddof=1) if len(m.diversities) > 1 else math.nan,
                            len(m.diversities), digits=3),
         str(m.shown.meta["num_images"]), str(m.shown.meta["feature_dim"]), f"`{m.shown.case}`")
        for m in methods
    )
    blocks.append(TableBlock(
        ("Method", "Intra-class diversity (mean ± sample sd over seeds)", "Images measured", "Feature dim",
         "Case"), rows,
        "Intra-class diversity = mean pairwise cosine distance (1 − cos) of the teacher's penultimate features "
        "between images of the same class, averaged over classes with ≥ 2 images, on each whole image set. "
        "The figure's claim ('MDC scatters a lot, ADI is in a dense concentration') predicts MDC > ADI.",
    ))
    blocks += claim_blocks(None, [figure_verdict(res)], [None], digits=3)
    blocks.append(FigureBlock("diversity.png", figs.diversity_figure(methods),
                              "Intra-class diversity per method: bar = mean over seeds, error bar = sample "
                              "standard deviation, dots = single seeds."))
    return blocks




def throughput_blocks(results_dir: Path) -> list[Block]:
    """The machines' measured throughput (bench/bench_throughput.py's results/throughput/*.json), if any."""
    files = sorted((Path(results_dir) / "throughput").glob("*.json"))
    rows = []
    for path in files:
        try:
            blob = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # another tool's file; a bad one must not stop the report
        machine = blob.get("machine", {})
        peak = blob.get("measurements", {}).get("matmul_peak", {}).get("flops")
        for key, m in sorted(blob.get("measurements", {}).items()):
            if "items_per_second" not in m:
                continue
            rows.append((path.stem, f"{machine.get('processor', '?')}, {m.get('threads', '?')} thread(s)",
                         m.get("name", key), str(m.get("batch", "–")), fmt(m["items_per_second"], 1),
                         fmt(peak / 1e9 if peak else None, 1), fmt(100 * m.get("fraction_of_peak", math.nan), 0)))
    if not rows:
        return []
    return [Heading(2, "Machine throughput"),
            TableBlock(("Host", "CPU", "Measurement", "Batch", "Images / s", "Matmul peak (GFLOP/s)",
                        "% of peak"), tuple(rows),
                       "From `pytest bench -k throughput` (ResNet-20, 32 x 32), results/throughput/; independent "
                       "of the profile.")]


def compute_line(res: BenchResults, table: Table) -> str:
    """The compute behind one table, labelled: wall time and summed run time, overall and per machine class."""
    rows = res.rows[res.rows["table"] == table.key]
    if not len(rows):
        return "Compute: no runs yet."
    per_class = "; ".join(f"{m}: {compute_text(res, group)}" for m, group in rows.groupby("machine_class"))
    return (f"Compute for this table: {compute_text(res, rows)} (a run shared with other tables counts in each). "
            f"Per machine class: {per_class}.")


def glance_row(title: str, table: Table | None, best: ClaimVerdict, fin: ClaimVerdict | None) -> tuple[str, ...]:
    gaps = "; ".join(f"{p.a} − {p.b}: {gap_text(p, 3 if table is None else 2)}" for p in best.pairs)
    paper = "; ".join(f"{p.a} − {p.b}: {paper_gap(table, p)}" for p in best.pairs) if table is not None else "–"
    classes = sorted({m for p in best.pairs for m in p.machine_classes})
    machines = " + ".join(classes) + (" (differ)" if len(classes) > 1 else "") if classes else "–"
    strict = best.strict_verdict or "–"
    return (title, best.claim.text, best.verdict, strict, fin.verdict if fin is not None else "n/a (features)",
            gaps, paper, machines)


GLANCE_COLUMNS = ("Table", "Paper's claim", "Verdict (best epoch)", "Strict '>' (for '≥')", "Verdict (final epoch)",
                  f"Our gaps, best epoch [{LEVEL} interval] (n, type)", "Paper's gaps (paper's setting)",
                  "Machine class")


def build_report(res: BenchResults) -> Report:
    """Every block of the report, and each claim's verdict (best epoch first)."""
    report = Report(res.profile, header_blocks(res))
    summary = summarize(res)
    overview: list[tuple[str, ...]] = []
    sections: list[Block] = []
    for i, table in enumerate(all_tables(), start=1):
        best = [evaluate_claim(c, samples(res, table, "best_epoch"), "best_epoch") for c in table.claims]
        final = [evaluate_claim(c, samples(res, table, "final_epoch"), "final_epoch") for c in table.claims]
        report.verdicts += best
        for b, f in zip(best, final, strict=True):
            overview.append(glance_row(table.title, table, b, f))
        sections += [Heading(2, f"{i}. {table.title} ({table.paper_ref})"), Para(table_setting(table, res)),
                     table_block(table, summary, res), Para(compute_line(res, table))]
        if table.key == "data_amount":
            sizes = summary[summary["table"] == "data_amount"]["num_images"]
            used = ", ".join(f"{n:,} → {u}" for n, u in zip(
                [c.paper_images for c in table.cells], sizes, strict=True))
            sections.append(Para(f"Images used per paper amount at `{res.profile}`: {used} (amounts scaled by the "
                                 f"profile's num_images / {PAPER_BASE_IMAGES:,}, rounded, ≥ 1 image)."))
            sections.append(FigureBlock("data-amount.png", figs.data_amount_figure(summary, res.profile),
                                        "Data-amount curve: ours (best and final epoch, mean ± sample standard "
                                        "deviation over seeds) and the change relative to the 5,120-image row, "
                                        "ours and the paper's (each in its own setting)."))
        sections += [Bullets(tuple(f"Caveat: {c}" for c in table.caveats))] if table.caveats else []
        notes = [f"{c.label}: {c.note}" for c in table.cells if c.note]
        sections += [Para("Cells: " + "; ".join(notes) + ".")] if notes else []
        sections += claim_blocks(table, best, final)
    methods = _method_figure_data(res)
    if methods:
        report.verdicts.append(figure_verdict(res))
        overview.append(glance_row("Figure 1 (diversity)", None, report.verdicts[-1], None))
    report.blocks += [Heading(2, "Claims at a glance"), TableBlock(GLANCE_COLUMNS, tuple(overview),
                      "Gaps: ours on this profile's setting, the paper's on its own; compare the two, never across.")]
    report.blocks += sections + curve_blocks(res) + figure_blocks(res, methods) + throughput_blocks(res.results_dir)
    return report


def curve_blocks(res: BenchResults) -> list[Block]:
    """The learning curve of the shared IntraQ W4A4 cell, beside the same cell at other profiles of its data, and
    the curves of runs on that data that are no table cell (their own settings named)."""
    curves = curves_beside(res.results_dir, res.profile)
    if not curves:
        return []
    lines = []
    for profile, runs in curves.items():
        lines += [f"`{profile}` seed {run.seed}: {_curve_summary(run)}" for run in runs]
    outside = curves_outside_grid(res.results_dir, curves[res.profile])
    blocks: list[Block] = [
        Heading(2, "Learning curve of the IntraQ W4A4 cell"),
        Para("How much of stage 2 a result needs: test top-1 per evaluated epoch of the cell that five tables "
             "share, from each record's history; other profiles of the same data set beside it, each in its own "
             "setting (their epochs, lr and synthetic sets differ), so compare shapes, not levels."),
        Bullets(tuple(lines)),
    ]
    if outside:
        blocks += [
            Para("Runs outside the grid on the same data (records with their own settings, e.g. a shorter stage 2 "
                 "or fewer images; never a table cell, never in a verdict):"),
            Bullets(tuple(f"{run.label}, {run.machine}: {_curve_summary(run)}" for run in outside)),
        ]
    blocks.append(FigureBlock(
        "learning-curve.png", figs.learning_curve_figure(curves, outside),
        f"Test top-1 per evaluated epoch, one line per seed{' (per run outside the grid)' if outside else ''}, ★ at "
        "the best epoch; shaded: the BN/range calibration epochs before fine-tuning."))
    return blocks


def _curve_summary(run: Curve) -> str:
    best = f"best {run.best:.2f}% at epoch {run.best_epoch}" if run.best is not None else "no best epoch"
    last = f"last {run.accuracy[-1]:.2f}% at epoch {run.epochs[-1]}"
    if run.diverged_at is not None:
        last += f"; diverged at epoch {run.diverged_at} (non-finite KD loss, the run stopped)"
    return f"{len(run.epochs)} evaluated epochs, {best}, {last}"


# ---------------------------------------------------------------------------------------------- markdown / HTML


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    return blocks_markdown(report.blocks)


def blocks_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            out.append(f"{b.text}\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items) + "\n")
        elif isinstance(b, TableBlock):
            lines = ["| " + " | ".join(_md_cell(c) for c in b.columns) + " |",
                     "|" + "|".join("---" for _ in b.columns) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            if b.caption:
                lines.append(f"\n*{b.caption}*")
            out.append("\n".join(lines) + "\n")
        elif isinstance(b, FigureBlock):
            out.append(f"![{b.caption}](figures/{b.name})\n\n*{b.caption}*\n")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    t = html.escape(str(text))
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    t = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", t)
    # [text](target.md#anchor) -> a link to the HTML page beside it
    t = re.sub(r"\[([^\]]+)\]\(([^)\s]+?)\.md(#[^)\s]*)?\)", r'<a href="\2.html\3">\1</a>', t)
    for word in VERDICTS:
        t = t.replace(f"<strong>{html.escape(word)}</strong>",
                      f'<strong class="{verdict_class(word)}">{html.escape(word)}</strong>')
    return t


def verdict_class(verdict: str) -> str:
    """CSS class of a verdict: "v-holds", "v-not-comparable", ..."""
    return "v-" + re.sub(r"[^a-z]+", "-", verdict.split(" (")[0].lower()).strip("-")


CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto; max-width: 1280px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } caption { caption-side: bottom; text-align: left; font-style: italic; color: #555;
     padding-top: .3rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; color: #555; font-size: .9rem; }
code { background: #f5f5f5; padding: 0 .2rem; }
td.v-holds, .v-holds { color: #176b1c; font-weight: 600; } td.v-fails, .v-fails { color: #b3261e; font-weight: 600; }
td.v-inconclusive, .v-inconclusive { color: #8a6d00; font-weight: 600; }
td.v-no-results, .v-no-results { color: #666; font-weight: 600; }
td.v-not-comparable, .v-not-comparable { color: #5b3a99; font-weight: 600; }
"""


def _html_cell(text: str) -> str:
    if text in VERDICTS:
        return f'<td class="{verdict_class(text)}">{html.escape(text)}</td>'
    return f"<td>{_inline_html(text)}</td>"


def to_html(report: Report) -> str:
    return blocks_html(report.blocks, f"IntraQ supplementary tables, profile {report.profile}")


def blocks_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained page; headings carry GitHub's anchor as id, so links into report.md work here too."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
             f"</title><style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f'<h{b.level} id="{html.escape(slug(b.text))}">{_inline_html(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, TableBlock):
            head = "".join(f"<th>{_inline_html(c)}</th>" for c in b.columns)
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in b.rows)
            cap = f"<caption>{_inline_html(b.caption)}</caption>" if b.caption else ""
            parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, FigureBlock):
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def render_report(profile: str, results: str | Path = "results", out: str | Path = "reports") -> ReportFiles:
    """Render reports/<profile>/report.md (+ figures/*.png) and the self-contained report.html from results/."""
    report = build_report(load_results(results, profile))
    folder = Path(out) / profile
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    written = []
    for b in report.blocks:
        if isinstance(b, FigureBlock):
            path = folder / "figures" / b.name
            path.write_bytes(b.png)
            written.append(path)
    md, page = folder / "report.md", folder / "report.html"
    md.write_text(to_markdown(report))
    page.write_text(to_html(report))
    return ReportFiles(md, page, tuple(written))
