"""One page over every profile (reports/index.md and index.html: claims x profiles) and README's generated results
block, both from results/ alone. Only verdicts and numbers are computed here (no figures), so this is fast."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from intraq.claims import ClaimVerdict, evaluate_claim, machine_class
from intraq.errors import UserInputError
from intraq.report.load import BenchResults, load_results
from intraq.report.render import (
    LEVEL,
    Block,
    Bullets,
    Heading,
    TableBlock,
    blocks_html,
    blocks_markdown,
    claim_heading,
    compute_text,
    evidence_text,
    evidence_tier,
    figure_verdict,
    fmt,
    gap_text,
    machine_classes_text,
    our_setting,
    paper_gap,
    samples,
    slug,
)
from intraq.results import cells_dir
from intraq.tables import FIGURE_CLAIM, Table, all_tables

README_BEGIN = ("<!-- BEGIN generated results: `intraq report --readme` writes this block from results/; "
                "edit intraq/report/index.py, not the text -->")
README_END = "<!-- END generated results -->"
PROFILE_ORDER = ("smoke", "cifar10-cpu", "cifar10", "imagenet")


@dataclass(frozen=True)
class ProfileClaims:
    """One profile's best-epoch verdicts, each with its table (None for the figure claim)."""

    res: BenchResults
    verdicts: tuple[tuple[Table | None, ClaimVerdict], ...]

    @property
    def profile(self) -> str:
        return self.res.profile

    def verdict(self, claim_key: str) -> tuple[Table | None, ClaimVerdict] | None:
        return next(((t, v) for t, v in self.verdicts if v.claim.key == claim_key), None)


def profiles_with_results(results: str | Path) -> list[str]:
    """Profiles that have cell files under results/, known profiles first in the suite's order."""
    root = Path(results)
    found = [p.name for p in sorted(root.iterdir()) if p.is_dir() and any(cells_dir(root, p.name).glob("*.json"))] \
        if root.exists() else []
    return sorted(found, key=lambda p: (PROFILE_ORDER.index(p) if p in PROFILE_ORDER else len(PROFILE_ORDER), p))


def profile_claims(res: BenchResults) -> ProfileClaims:
    """Best-epoch verdicts of every claim of every table, then the figure claim where figure data exist."""
    out: list[tuple[Table | None, ClaimVerdict]] = []
    for table in all_tables():
        values = samples(res, table, "best_epoch")
        out += [(table, evaluate_claim(c, values, "best_epoch")) for c in table.claims]
    if res.figures:
        out.append((None, figure_verdict(res)))
    return ProfileClaims(res, tuple(out))


def load_all(results: str | Path) -> list[ProfileClaims]:
    profiles = profiles_with_results(results)
    if not profiles:
        raise UserInputError(f"no bench results under {results}; run `pytest bench --profile smoke` first")
    return [profile_claims(load_results(results, p)) for p in profiles]


def claim_rows() -> list[tuple[str, str, str]]:
    """(table title, claim key, claim text) of every claim, in the reports' order."""
    rows = [(t.title, c.key, c.text) for t in all_tables() for c in t.claims]
    return [*rows, ("Figure 1 (diversity)", FIGURE_CLAIM.key, FIGURE_CLAIM.text)]


def summary_cell(table: Table | None, v: ClaimVerdict, link: str | None = None) -> str:
    """"**verdict** · gaps with intervals · machine class · [section](link)" for one claim at one profile."""
    digits = 3 if table is None else 2
    gaps = "; ".join(f"{p.a} − {p.b} {gap_text(p, digits)}" for p in v.pairs)
    classes = sorted({m for p in v.pairs for m in p.machine_classes})
    machines = " + ".join(classes) + (" (differ)" if len(classes) > 1 else "") if classes else "no runs"
    strict = f" (strict '>': {v.strict_verdict})" if v.strict_verdict is not None else ""
    paper = "; ".join(paper_gap(table, p) for p in v.pairs) if table is not None else ""
    parts = [f"**{v.verdict}**{strict}", f"ours: {gaps}"]
    if paper:
        parts.append(f"paper: {paper}")
    parts.append(machines)
    if link:
        parts.append(f"[section]({link})")
    return " · ".join(parts)


def index_blocks(found: Sequence[ProfileClaims]) -> list[Block]:
    profiles = [f.profile for f in found]
    items = [
        f"`{f.profile}`: [report]({f.profile}/report.md); {evidence_text(f.profile)}; {our_setting(f.res)}; "
        "runs by machine class: "
        f"{machine_classes_text(f.res.rows)}; compute: {compute_text(f.res, f.res.rows)}."
        for f in found
    ]
    items += [
        f"Each cell: the verdict on best-epoch accuracy; our gap a − b per pair of the claim with its {LEVEL} "
        "interval, n seeds and the interval type (paired by seed or Welch); the paper's gap in its own setting; "
        "the machine class(es) of the runs behind it; a link to the claim's section of that profile's report.",
        "Machine class = the GPU's name for a CUDA run, otherwise \"CPU <processor>, <n> cores\", plus the torch "
        "version. Pairs whose cells ran on different machine classes are not decided. Margins are the suite's, "
        "fixed before any run. Rules: `intraq/claims.py`.",
        "Rendered by `intraq report` from results/ alone. Each profile's evidence tier (`intraq/profiles.py`, "
        "its `evidence`) says what its verdicts are worth; no CPU profile decides the paper's claims.",
    ]
    rows = []
    for title, key, text in claim_rows():
        cells = []
        for f in found:
            got = f.verdict(key)
            if got is None:
                cells.append("no results")
                continue
            table, v = got
            cells.append(summary_cell(table, v, f"{f.profile}/report.md#{slug(claim_heading(v.claim.text))}"))
        rows.append((title, text, *cells))
    return [Heading(1, "IntraQ claims across profiles"), Bullets(tuple(items)),
            TableBlock(("Table", "Paper's claim", *(f"`{p}` ({evidence_tier(p)})" for p in profiles)), tuple(rows))]


@dataclass(frozen=True)
class IndexFiles:
    markdown: Path
    html: Path


def render_index(results: str | Path = "results", out: str | Path = "reports") -> IndexFiles:
    """Write reports/index.md and reports/index.html (claims x profiles) from results/."""
    blocks = index_blocks(load_all(results))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    md, page = folder / "index.md", folder / "index.html"
    md.write_text(blocks_markdown(blocks))
    page.write_text(blocks_html(blocks, "IntraQ claims across profiles"))
    return IndexFiles(md, page)


# ------------------------------------------------------------------------------------------------ README block


def throughput_lines(results: str | Path) -> list[str]:
    """One line per results/throughput/*.json: the machine and each measured rate."""
    lines = []
    for path in sorted((Path(results) / "throughput").glob("*.json")):
        try:
            blob = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        machine = blob.get("machine", {})
        rates = [f"{m.get('name', key)} {fmt(m['items_per_second'], 0)}/s"
                 for key, m in sorted(blob.get("measurements", {}).items()) if "items_per_second" in m]
        if not rates:
            continue
        peak = blob.get("measurements", {}).get("matmul_peak", {}).get("flops")
        peak_text = f"; fp32 matmul peak {peak / 1e9:,.0f} GFLOP/s" if peak else ""
        lines.append(f"Throughput on {machine_class(machine)}, {machine.get('torch_threads', '?')} torch threads "
                     f"(`pytest bench -k throughput`, `results/throughput/{path.name}`; generation in "
                     f"image-iterations, fine-tuning in images): {', '.join(rates)}{peak_text}.")
    return lines


def readme_block(results: str | Path = "results") -> str:
    """The README's generated results section (markers included)."""
    found = load_all(results)
    out = [README_BEGIN, "",
           "All claims across profiles: [`reports/index.md`](reports/index.md) "
           "([HTML](reports/index.html)). Verdicts on best-epoch top-1 (the paper's metric); gaps are ours with "
           f"their {LEVEL} interval, n seeds and interval type, the paper's in its own setting.", ""]
    for f in found:
        runs = f.res.rows.drop_duplicates(["case", "seed"])
        seeds = ", ".join(str(s) for s in sorted(set(f.res.rows["seed"])))
        out.append(f"- **`{f.profile}`**: [`reports/{f.profile}/report.md`](reports/{f.profile}/report.md) "
                   f"([HTML](reports/{f.profile}/report.html)); {evidence_text(f.profile)}; "
                   f"{our_setting(f.res)}; {len(runs)} runs, seeds "
                   f"{seeds}; by machine class: {machine_classes_text(f.res.rows)}; compute: "
                   f"{compute_text(f.res, f.res.rows)}.")
        for table, v in f.verdicts:
            out.append(f"  - {v.claim.text}: {summary_cell(table, v)}.")
    lines = throughput_lines(results)
    if lines:
        out += [""] + [f"{line}" for line in lines]
    out += ["", README_END]
    return "\n".join(out)


def readme_section(text: str) -> tuple[int, int]:
    """(start, end) offsets of the generated block in README text, markers included."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise UserInputError(f"README has no generated results block; add the two marker lines\n{README_BEGIN}\n"
                             f"{README_END}\nwhere the results section goes")
    return start, end + len(README_END)


def rewrite_readme(readme: str | Path = "README.md", results: str | Path = "results") -> bool:
    """Replace README's generated block with what results/ give; True if the file changed."""
    path = Path(readme)
    if not path.is_file():
        raise UserInputError(f"no README at {path}; pass --readme PATH")
    text = path.read_text()
    start, end = readme_section(text)
    new = text[:start] + readme_block(results) + text[end:]
    if new == text:
        return False
    path.write_text(new)
    return True
