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

from intraq.claims import FAILS, HOLDS, INCONCLUSIVE, ClaimVerdict, evaluate_claim
from intraq.report import figures as figs
from intraq.report.load import BenchResults, load_results, summarize
from intraq.tables import FIGURE_CLAIM, METRIC_LABELS, PAPER_BASE_IMAGES, PAPER_SETTING, Table, all_tables


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


def _profile_line(profile: str) -> str:
    from intraq.profiles import PROFILES

    if profile not in PROFILES:
        return profile
    doc = (PROFILES.get(profile).__doc__ or "").strip().splitlines()
    return f"`{profile}`, {doc[0].rstrip('.')}" if doc else profile


def header_blocks(res: BenchResults) -> list[Block]:
    rows = res.rows
    runs = rows.drop_duplicates(["case", "seed"])
    compute = float(runs["seconds_total"].sum()) + sum(float(f.meta.get("seconds", 0.0)) for f in res.figures.values())
    teachers = sorted({f"{t}, {a:.2f}% test top-1" for t, a in zip(rows["teacher_name"], rows["teacher"],
                                                                       strict=True) if a == a})
    datasets = sorted({str(d) for d in rows["dataset"]})
    items = []
    if rows["fixture"].any():
        items.append("**FABRICATED TEST FIXTURE: these numbers were made up by the test suite, not measured.**")
    items += [
        f"Profile: {_profile_line(res.profile)}.",
        f"Rendered from the results folder `{Path(res.results_dir) / res.profile}/`.",
        f"All measured numbers come from this profile's data ({', '.join(datasets)}) and teacher "
        f"({'; '.join(teachers)}). The paper's values are for {PAPER_SETTING}; unless the profile is `imagenet`, "
        "compare differences and claim verdicts with the paper, not absolute values.",
        f"Hardware: {'; '.join(sorted(set(rows['machine'])))}.",
        f"Total compute time: {compute / 60:.1f} min ({compute:.0f} s) over {len(runs)} runs "
        f"(distinct case × seed; shared cells run once), summed over stages, plus figure-data extraction.",
        f"Seeds: {', '.join(str(s) for s in sorted(set(rows['seed'])))}. "
        f"Commits: {', '.join(sorted({str(c) for c in rows['git_commit']}))}.",
    ]
    from intraq.profiles import profile_deviations

    deviations = profile_deviations(res.profile)
    if deviations:
        items.append(
            "Deviations of this profile from the official hyperparameters (`intraq/profiles.py`): "
            + "; ".join(f"`{k}` {v}" for k, v in deviations.items()) + "."
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
    items += [
        "Accuracy columns: " + "; ".join(f"*{k.replace('_', ' ')}* = {v}" for k, v in METRIC_LABELS.items()) + ".",
        "Claims: decided on per-seed best-epoch accuracies (the paper's metric) with a Welch 90% interval of the "
        "difference of means (one-sided 5% each way); fewer than 2 seeds or an interval that straddles the "
        "threshold is *inconclusive*. The final-epoch verdict is shown beside it. Rules: `intraq/claims.py`.",
        f"Sources: results/{res.profile}/ (cells/, run records, figures-data/); rendered by `intraq report`.",
    ]
    return [Heading(1, f"IntraQ supplementary tables, profile `{res.profile}`"), Bullets(tuple(items))]


def table_block(table: Table, summary: pd.DataFrame) -> TableBlock:
    rows = summary[summary["table"] == table.key]
    fp = table.paper_full_precision
    columns = ("Row", "Images used", "Paper (%)", "Ours best epoch (%)", "Δ best − paper", "Ours final epoch (%)",
               "Δ final − paper", "Ours after calibration (%)", "Teacher (%)", "Case")
    if fp is not None:
        columns = (*columns[:-1], "Paper drop from FP", "Our drop (teacher − best)", columns[-1])
    out = []
    for _, r in rows.iterrows():
        row = (
            r["label"], r["num_images"] or "–", fmt(r["paper_value"]),
            mean_std_n(r["best_epoch_mean"], r["best_epoch_std"], r["best_epoch_n"]), fmt(r["best_epoch_diff"],
                                                                                          signed=True),
            mean_std_n(r["final_epoch_mean"], r["final_epoch_std"], r["final_epoch_n"]),
            fmt(r["final_epoch_diff"], signed=True),
            mean_std_n(r["after_calibration_mean"], r["after_calibration_std"], r["after_calibration_n"]),
            fmt(r["teacher"]),
        )
        if fp is not None:
            row = (*row, fmt(fp - r["paper_value"]), fmt(r["teacher"] - r["best_epoch_mean"]))
        out.append((*row, f"`{r['cases']}`" if r["cases"] else "–"))
    fp_text = f" (full precision {fp:.2f})" if fp is not None else ""
    caption = (f"{table.paper_ref}: {table.caption} Paper values: {table.paper_setting}{fp_text} unless the row "
               "varies it.")
    return TableBlock(columns, tuple(out), caption)


def claim_blocks(verdicts: Sequence[ClaimVerdict], final: Sequence[ClaimVerdict]) -> list[Block]:
    blocks: list[Block] = []
    for best, fin in zip(verdicts, final, strict=True):
        blocks.append(Para(f"**Claim: {best.claim.text}.** Verdict (best epoch): **{best.verdict}**; "
                           f"final epoch: **{fin.verdict}**. Test: {best.test}"))
        rows = []
        for metric, v in (("best epoch", best), ("final epoch", fin)):
            for p in v.pairs:
                rows.append((
                    metric, f"{p.a} vs {p.b}", mean_std_n(p.a_summary.mean, p.a_summary.std, p.a_summary.n),
                    mean_std_n(p.b_summary.mean, p.b_summary.std, p.b_summary.n), fmt(p.diff, signed=True),
                    f"[{fmt(p.ci_low, signed=True)}, {fmt(p.ci_high, signed=True)}]", fmt(p.margin, signed=True),
                    p.verdict, p.reason,
                ))
        blocks.append(TableBlock(("Accuracy", "Pair (a vs b)", "a (%)", "b (%)", "a − b", "90% CI", "Threshold",
                                  "Verdict", "Why"), tuple(rows)))
    return blocks


def _method_figure_data(res: BenchResults) -> list[figs.MethodFigureData]:
    out = []
    for name, table, cell in (("MDC (IntraQ)", "mdc_vs_adi", "mdc"), ("ADI", "mdc_vs_adi", "adi"),
                              ("Real data", "comparison", "real")):
        rows = res.cell_rows(table, cell).sort_values("seed")
        found = [res.figures[k] for k in (f"{c}-seed{s}" for c, s in zip(rows["case"], rows["seed"], strict=True))
                 if k in res.figures]
        if found:
            out.append(figs.MethodFigureData(name, found[0], tuple(f.diversity for f in found)))
    return out


def figure_verdict(methods: Sequence[figs.MethodFigureData]) -> ClaimVerdict:
    """Figure 1's claim on the measured intra-class diversity, per seed, with the accuracy claims' rules."""
    return evaluate_claim(FIGURE_CLAIM, {m.name: list(m.diversities) for m in methods}, "intra_class_diversity")


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
        ("Method", "Intra-class diversity (mean ± std over seeds)", "Images measured", "Feature dim", "Case"), rows,
        "Intra-class diversity = mean pairwise cosine distance (1 − cos) of the teacher's penultimate features "
        "between images of the same class, averaged over classes with ≥ 2 images, on each whole image set. "
        "The figure's claim ('MDC scatters a lot, ADI is in a dense concentration') predicts MDC > ADI.",
    ))
    verdict = figure_verdict(methods)
    pairs = "; ".join(f"{p.a} − {p.b} = {fmt(p.diff, 3, signed=True)}, 90% CI [{fmt(p.ci_low, 3, signed=True)}, "
                      f"{fmt(p.ci_high, 3, signed=True)}]: {p.reason}" for p in verdict.pairs)
    blocks.append(Para(f"**Claim: {FIGURE_CLAIM.text}.** Verdict: **{verdict.verdict}**. {pairs}. "
                       f"Test: {verdict.test}"))
    blocks.append(FigureBlock("diversity.png", figs.diversity_figure(methods),
                              "Intra-class diversity per method: bar = mean over seeds, dots = single seeds."))
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
    """The compute behind one table: summed run time of its distinct (case, seed) runs, and where they ran."""
    rows = res.rows[res.rows["table"] == table.key].drop_duplicates(["case", "seed"])
    if not len(rows):
        return "Compute: no runs yet."
    seconds = float(rows["seconds_total"].sum())
    per_machine = rows.groupby("machine")["seconds_total"].agg(["sum", "count"])
    where = "; ".join(f"{int(r['count'])} on {m} ({r['sum'] / 60:.1f} min)" for m, r in per_machine.iterrows())
    return (f"Compute for this table: {seconds / 60:.1f} min over {len(rows)} runs (a run shared with other tables "
            f"counts in each; runs in parallel overlap in wall time): {where}.")


def build_report(res: BenchResults) -> Report:
    """Every block of the report, and each claim's verdict (best epoch first)."""
    report = Report(res.profile, header_blocks(res))
    summary = summarize(res)
    overview: list[tuple[str, ...]] = []
    sections: list[Block] = []
    for i, table in enumerate(all_tables(), start=1):
        best = [evaluate_claim(c, res.values(table.key, "best_epoch"), "best_epoch") for c in table.claims]
        final = [evaluate_claim(c, res.values(table.key, "final_epoch"), "final_epoch") for c in table.claims]
        report.verdicts += best
        for b, f in zip(best, final, strict=True):
            overview.append((table.title, b.claim.text, b.verdict, f.verdict))
        sections += [Heading(2, f"{i}. {table.title} ({table.paper_ref})"), table_block(table, summary),
                     Para(compute_line(res, table))]
        if table.key == "data_amount":
            sizes = summary[summary["table"] == "data_amount"]["num_images"]
            used = ", ".join(f"{n:,} → {u}" for n, u in zip(
                [c.paper_images for c in table.cells], sizes, strict=True))
            sections.append(Para(f"Images used per paper amount at `{res.profile}`: {used} (amounts scaled by the "
                                 f"profile's num_images / {PAPER_BASE_IMAGES:,}, rounded, ≥ 1 image)."))
            sections.append(FigureBlock("data-amount.png", figs.data_amount_figure(summary, res.profile),
                                        "Data-amount curve: ours (best and final epoch, mean ± std over seeds) and "
                                        "the change relative to the 5,120-image row, ours and the paper's."))
        sections += [Bullets(tuple(f"Caveat: {c}" for c in table.caveats))] if table.caveats else []
        notes = [f"{c.label}: {c.note}" for c in table.cells if c.note]
        sections += [Para("Cells: " + "; ".join(notes) + ".")] if notes else []
        sections += claim_blocks(best, final)
    methods = _method_figure_data(res)
    if methods:
        report.verdicts.append(figure_verdict(methods))
        overview.append(("Figure 1 (diversity)", FIGURE_CLAIM.text, report.verdicts[-1].verdict,
                         "n/a (measured on features)"))
    report.blocks += [Heading(2, "Claims at a glance"),
                      TableBlock(("Table", "Paper's claim", "Verdict (best epoch)", "Verdict (final epoch)"),
                                 tuple(overview))]
    report.blocks += sections + figure_blocks(res, methods) + throughput_blocks(res.results_dir)
    return report


# ---------------------------------------------------------------------------------------------- markdown / HTML


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    out: list[str] = []
    for b in report.blocks:
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
    for word in (HOLDS, FAILS, INCONCLUSIVE):
        t = re.sub(rf"<strong>{word}</strong>", f'<strong class="v-{word}">{word}</strong>', t)
    return t


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
"""


def _html_cell(text: str) -> str:
    if text in (HOLDS, FAILS, INCONCLUSIVE):
        return f'<td class="v-{text}">{text}</td>'
    return f"<td>{_inline_html(text)}</td>"


def to_html(report: Report) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>IntraQ supplementary "
             f"tables, profile {html.escape(report.profile)}</title><style>{CSS}</style></head><body>"]
    for b in report.blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
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
