"""The index over profiles, README's generated results block, compute as wall and summed time, and re-renders that
are byte-identical. The fixture is test_report's FABRICATED one (never a measurement, always in a tmp folder)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_report import PROFILE, write_fixture

from intraq.cli import main
from intraq.errors import UserInputError
from intraq.report import figures as figs
from intraq.report import render_report
from intraq.report.index import (
    README_BEGIN,
    README_END,
    profiles_with_results,
    readme_block,
    readme_section,
    render_index,
    rewrite_readme,
)
from intraq.report.render import slug
from intraq.report.timing import merged_seconds

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The fixture profile, plus a copy ('fixture-mixed') whose ADI runs say they ran on a GPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figs, "embed_2d", lambda f, seed=0: (f[:, :2].astype(float), "PCA (test)"))
        root = tmp_path_factory.mktemp("fabricated-index") / "results"
        write_fixture(root)
        shutil.copytree(root / PROFILE, root / "fixture-mixed")
        for path in (root / "fixture-mixed" / "cells").glob("mdc_vs_adi--adi-*.json"):
            blob = json.loads(path.read_text())
            blob["machine"] = dict(blob["machine"], device="cuda", gpu="Fixture GPU", torch="y")
            path.write_text(json.dumps(blob))
        yield root


def test_wall_time_merges_overlapping_runs() -> None:
    assert merged_seconds([]) == 0.0
    assert merged_seconds([(0, 10), (5, 15), (20, 30)]) == 25.0  # [0, 15] and [20, 30]
    assert merged_seconds([(0, 10), (2, 3), (10, 12)]) == 12.0  # nested and touching
    assert merged_seconds([(20, 30), (0, 10)]) == 20.0  # order does not matter


def test_slug_is_githubs_heading_anchor() -> None:
    assert slug("Claim: MDC beats ADI") == "claim-mdc-beats-adi"
    assert slug("Claim: Real data ≥ IntraQ ≥ SQuant ≥ Qimera") == "claim-real-data--intraq--squant--qimera"
    assert slug("Claim: 256 images come within a point of 5,120") == "claim-256-images-come-within-a-point-of-5120"


def test_index_has_every_claim_and_profile(results: Path, tmp_path: Path) -> None:
    files = render_index(results, tmp_path)
    md, page = files.markdown.read_text(), files.html.read_text()
    assert profiles_with_results(results) == [PROFILE, "fixture-mixed"]
    header = next(line for line in md.splitlines() if line.startswith("| Table"))
    assert header == "| Table | Paper's claim | `fixture` (a study's own) | `fixture-mixed` (a study's own) |"
    row = next(line for line in md.splitlines() if line.startswith("| MDC vs ADI | MDC beats ADI"))
    fixture_cell, mixed_cell = row.split(" | ")[2:4]
    assert fixture_cell.startswith("**holds** · ours: mdc − adi +10.60 [+9.93, +11.27] (n=3, paired)")
    assert "paper: +8.80" in fixture_cell and "CPU fixture-cpu, 2 cores, torch x" in fixture_cell
    assert "[section](fixture/report.md#claim-mdc-beats-adi)" in fixture_cell
    assert mixed_cell.startswith("**not comparable (machines differ)**")
    assert "Fixture GPU, torch y" in mixed_cell and "(differ)" in mixed_cell
    assert 'href="fixture/report.html#claim-mdc-beats-adi"' in page and 'class="v-not-comparable"' in page
    assert md.count("\n| ") == 1 + 12  # header, eleven accuracy claims and the figure claim


def test_index_links_land_on_report_headings(results: Path, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figs, "embed_2d", lambda f, seed=0: (f[:, :2].astype(float), "PCA (test)"))
        report = render_report(PROFILE, results, tmp_path)
    index = render_index(results, tmp_path)
    page = report.html.read_text()
    md = report.markdown.read_text()
    anchors = re.findall(r"\(fixture/report\.md#([^)]+)\)", index.markdown.read_text())
    assert len(anchors) == 12
    for anchor in anchors:
        assert f'id="{anchor}"' in page
        assert any(slug(line.lstrip("# ")) == anchor for line in md.splitlines() if line.startswith("### "))


def test_rerender_is_byte_identical(results: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("first", "second"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(figs, "embed_2d", lambda f, seed=0: (f[:, :2].astype(float), "PCA (test)"))
            render_report(PROFILE, results, tmp_path / name)
        render_index(results, tmp_path / name)
        outputs.append({p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*")
                        if p.is_file()})
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) == 2 + 2 + 4  # index, report, 4 figures
    for path, data in outputs[0].items():
        assert outputs[1][path] == data, path


def test_partial_results_say_no_results(results: Path, tmp_path: Path) -> None:
    partial = tmp_path / "results"
    (partial / "fixture" / "cells").mkdir(parents=True)
    for path in (results / PROFILE / "cells").glob("data_amount--*.json"):
        shutil.copy(path, partial / "fixture" / "cells" / path.name)
    md = render_index(partial, tmp_path / "out").markdown.read_text()
    mdc = next(line for line in md.splitlines() if line.startswith("| MDC vs ADI"))
    assert "**no results**" in mdc and "inconclusive" not in mdc
    figure = next(line for line in md.splitlines() if line.startswith("| Figure 1"))
    assert figure.endswith("| no results |")


def test_readme_block_is_rewritten_between_its_markers(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_BEGIN}\nstale numbers\n{README_END}\nafter\n")
    assert rewrite_readme(readme, results) is True
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("\nafter\n") and "stale numbers" not in text
    assert "- **`fixture`**: [`reports/fixture/report.md`]" in text and "MDC beats ADI: **holds**" in text
    assert rewrite_readme(readme, results) is False  # nothing to change the second time
    readme.write_text("no markers\n")
    with pytest.raises(UserInputError, match="no generated results block"):
        rewrite_readme(readme, results)


def test_cli_report_readme(results: Path, tmp_path: Path, capsys) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_BEGIN}\n{README_END}\n")
    argv = ["report", "--readme", str(readme), "--results", str(results), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert (tmp_path / "out" / "index.html").exists() and not (tmp_path / "out" / PROFILE).exists()
    assert "rewritten" in capsys.readouterr().out and "fixture-mixed" in readme.read_text()
    missing = ["report", "--readme", str(tmp_path / "missing.md"), "--results", str(results), "--out",
               str(tmp_path / "not-written")]
    assert main(missing) == 2 and not (tmp_path / "not-written").exists()  # checked before anything is written


def test_every_profile_says_what_its_verdicts_are_worth(results: Path, tmp_path: Path) -> None:
    """The evidence tiers appear wherever verdicts do: `intraq profiles`, each report's header, the index and
    README block; a profile cannot be registered without one."""
    from intraq.profiles import PROFILES, evidence_of
    from intraq.report.render import evidence_text

    tiers = [evidence_of(name) for name in PROFILES.names()]
    assert all(tiers) and evidence_of("my-study") is None  # every registered profile has one; a study's name none
    assert not any(";" in e.tier + e.says for e in tiers)  # spliced into "; "-separated lines
    assert "never evidence about the paper" in evidence_text("smoke")
    assert "CPU preview" in evidence_text("cifar10-cpu") and "crowd within about a point" in evidence_text(
        "cifar10-cpu")
    block = readme_block(results)
    assert "evidence: `fixture` is not one of the suite's profiles" in block
    report = render_report(PROFILE, results, tmp_path).markdown.read_text()
    assert "- Evidence: `fixture` is not one of the suite's profiles" in report


def test_readme_results_block_matches_results() -> None:
    """README's generated block must be what results/ give today: run `intraq report --readme` after new results."""
    text = (REPO / "README.md").read_text()
    start, end = readme_section(text)
    assert text[start:end] == readme_block(REPO / "results"), (
        "README.md's results block is stale: run `intraq report --readme` (or `tox -e report`) and commit it")


def test_committed_index_matches_results(tmp_path: Path) -> None:
    """reports/index.md and index.html are what `intraq report` renders from the committed results/."""
    files = render_index(REPO / "results", tmp_path)
    assert files.markdown.read_bytes() == (REPO / "reports" / "index.md").read_bytes()
    assert files.html.read_bytes() == (REPO / "reports" / "index.html").read_bytes()
