"""The report rendered from a small results fixture: tables, verdicts, figures, markdown and self-contained HTML.

Every number below is FABRICATED for these tests (each record says so in its "fixture" field); nothing here is
a measurement, and the fixture lives in a temporary folder, never in results/.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from intraq.cli import main
from intraq.errors import UserInputError
from intraq.report import build_report, render_report
from intraq.report import figures as figs
from intraq.report.collect import intra_class_diversity
from intraq.report.load import load_results, summarize
from intraq.report.render import Report, TableBlock, compute_line, to_markdown
from intraq.tables import all_tables, get_table

PROFILE = "fixture"

# FABRICATED best-epoch accuracies per (table, cell): one value per seed. Chosen so that the claims come out as
# MDC beats ADI: holds; LOR extras add nothing: fails (L+R gains 3.1 points); 256 within a point of 5,120:
# inconclusive (one seed of 256); more than 5,120 adds little: holds; ordering: holds.
BEST: dict[tuple[str, str], list[float]] = {
    ("mdc_vs_adi", "mdc"): [91.0, 91.1, 91.2],
    ("mdc_vs_adi", "adi"): [80.0, 80.5, 81.0],
    ("lor", "L"): [91.0, 91.2, 91.1],
    ("lor", "L+F"): [91.0, 91.1, 91.2],
    ("lor", "L+R"): [94.1, 94.2, 94.3],
    ("lor", "L+R+F"): [91.0, 91.1, 91.2],
    ("data_amount", "256"): [88.0],
    ("data_amount", "1280"): [89.0, 89.5, 89.2],
    ("data_amount", "5120"): [91.0, 91.1, 91.2],
    ("data_amount", "10000"): [91.0, 91.1, 91.2],
    ("data_amount", "20000"): [91.05, 91.1, 91.15],
    ("comparison", "real"): [97.0, 97.2, 97.4],
    ("comparison", "qimera"): [60.0, 61.0, 62.0],
    ("comparison", "squant"): [70.0, 70.0, 70.0],
    ("comparison", "intraq"): [91.0, 91.1, 91.2],
    ("main_cifar10", "w4a4"): [91.0, 91.1, 91.2],
    ("main_cifar10", "w3a3"): [80.0, 81.0, 82.0],
    # rows the suite adds (no paper value): W3A3 versions and like-for-like arms
    ("mdc_vs_adi", "mdc_w3a3"): [80.0, 81.0, 82.0],
    ("mdc_vs_adi", "adi_w3a3"): [70.0, 71.0, 72.5],
    ("mdc_vs_adi", "adi_paper"): [78.0, 79.0, 80.0],
    ("mdc_vs_adi", "adi_paper_w3a3"): [69.0, 70.0, 71.0],
    ("comparison", "real_calib"): [97.5, 97.6, 97.7],
    ("comparison", "real_official_lr"): [97.5, 97.6, 97.7],
    ("comparison", "squant_lineage"): [65.0, 65.5, 66.0],
    ("comparison", "real_calib_w3a3"): [90.0, 90.5, 91.0],
    ("comparison", "qimera_w3a3"): [40.0, 41.0, 42.0],
    ("comparison", "squant_w3a3"): [50.0, 51.0, 52.0],
    ("comparison", "squant_lineage_w3a3"): [45.0, 46.0, 47.0],
    ("comparison", "intraq_w3a3"): [80.0, 81.0, 82.0],
}
SHARED = "c0ffee000001"  # the IntraQ cell shared by five tables
SHARED_W3A3 = "c0ffee000003"  # the IntraQ W3A3 cell shared by three tables


def _case(table: str, cell: str) -> str:
    if (table, cell) in {("mdc_vs_adi", "mdc"), ("lor", "L+F"), ("data_amount", "5120"), ("comparison", "intraq"),
                         ("main_cifar10", "w4a4")}:
        return SHARED
    if (table, cell) in {("main_cifar10", "w3a3"), ("mdc_vs_adi", "mdc_w3a3"), ("comparison", "intraq_w3a3")}:
        return SHARED_W3A3
    return hashlib.sha256(f"{table}/{cell}".encode()).hexdigest()[:12]


def _npz(path: Path, case: str, seed: int, method: str, spread: float) -> None:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 10)
    centers = rng.normal(size=(4, 8)) * 3
    feats = centers[labels] + spread * rng.normal(size=(40, 8))
    meta = {"method": method, "case": case, "seed": seed, "profile": PROFILE, "cell": method, "dataset": "fixture",
            "num_classes": 4, "class_names": [], "num_images": 40, "feature_dim": 8, "feature_module": "pool",
            "seconds": 0.5, "fixture": "FABRICATED TEST FIXTURE"}
    buf = io.BytesIO()
    np.savez_compressed(
        buf, grid_images=rng.integers(0, 255, size=(16, 8, 8, 3), dtype=np.uint8),
        grid_labels=np.sort(rng.integers(0, 4, 16)).astype(np.int32), features=feats.astype(np.float16),
        feature_labels=labels.astype(np.int32), diversity=np.float64(0.1 * spread + 0.01 * seed),
        diversity_classes=np.arange(4, dtype=np.int32), diversity_values=np.full(4, 0.1 * spread),
        meta=np.array(json.dumps(meta)),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _iso(posix: float) -> str:
    return datetime.fromtimestamp(posix, timezone.utc).isoformat(timespec="seconds")


def write_fixture(results: Path) -> None:
    """Cell files and figure data of a FABRICATED bench run at profile 'fixture'."""
    for table in all_tables():
        for cell in table.cells:
            for seed, best in enumerate(BEST[(table.key, cell.key)]):
                case = _case(table.key, cell.key)
                blob = {
                    "fixture": "FABRICATED TEST FIXTURE: not a measurement",
                    "table": table.key, "cell": cell.key, "label": cell.label, "note": cell.note,
                    "paper": {"value": cell.paper.value, "table": cell.paper.table, "row": cell.paper.row,
                              "setting": cell.paper.setting, "source": cell.paper.source},
                    "paper_images": cell.paper_images,
                    "num_images": (cell.paper_images or 5120) // 20,
                    "case": case, "seed": seed, "profile": PROFILE, "method": "intraq",
                    "accuracy": {"teacher": 98.0, "after_calibration": best - 5.0, "final_epoch": best - 1.0,
                                 "best_epoch": best, "best_epoch_index": 7},
                    "seconds": {"total": 10.0, "generation": 4.0}, "git_commit": "fixture",
                    "machine": {"processor": "fixture-cpu", "cpu_count": 2, "torch_threads": 1, "torch": "x",
                                "device": "cpu"},
                    "config": {"teacher": {"name": "fixture_cnn"}, "data": {"name": "fixture"}},
                }
                out = results / PROFILE / "cells" / f"{table.key}--{cell.key}-seed{seed}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(blob))
                # the run record's times: runs of one case start 10 s apart and take 10 s, so they never overlap
                # but the five cases of a seed run in parallel (see test_each_table_states_its_compute)
                start = 1_800_000_000 + 100 * seed + (0 if case == SHARED else 5)
                times = {"fixture": "FABRICATED", "started": _iso(start), "finished": _iso(start + 10)}
                (results / PROFILE / f"{case}-seed{seed}.json").write_text(json.dumps(times))
                if cell.figures:
                    spread = {"mdc": 2.0, "adi": 0.3, "real": 1.0}[cell.key]
                    _npz(results / PROFILE / "figures-data" / f"{case}-seed{seed}.npz", case, seed, cell.key, spread)


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # UMAP's first fit JIT-compiles for ~20 s; the embedding is not what these tests check.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figs, "embed_2d", lambda f, seed=0: (f[:, :2].astype(float), "PCA (test)"))
        results = tmp_path_factory.mktemp("fabricated") / "results"
        write_fixture(results)
        yield results


@pytest.fixture(scope="module")
def report(fixture_results: Path) -> Report:
    return build_report(load_results(fixture_results, PROFILE))


def _table(report: Report, first_column_value: str) -> TableBlock:
    for block in report.blocks:
        if isinstance(block, TableBlock) and block.rows and block.rows[0][0] == first_column_value:
            return block
    raise AssertionError(f"no table starting with {first_column_value!r}")


def test_summary_numbers(fixture_results: Path) -> None:
    summary = summarize(load_results(fixture_results, PROFILE)).set_index(["table", "cell"])
    mdc = summary.loc[("mdc_vs_adi", "mdc")]
    assert mdc["best_epoch_mean"] == pytest.approx(91.1) and mdc["best_epoch_std"] == pytest.approx(0.1)
    assert mdc["best_epoch_n"] == 3 and mdc["final_epoch_mean"] == pytest.approx(90.1)
    assert mdc["best_epoch_diff"] == pytest.approx(91.1 - 63.77)
    assert summary.loc[("data_amount", "256")]["best_epoch_n"] == 1


def test_claim_verdicts(report: Report) -> None:
    verdicts = {v.claim.key: v.verdict for v in report.verdicts}
    assert verdicts == {
        "mdc_beats_adi": "holds",  # paired by seed: every cell of the fixture ran seeds 0..n-1 on one machine
        "lor_extras_add_nothing": "fails",
        "small_set_within_a_point": "inconclusive",
        "more_than_5120_adds_little": "holds",
        "ordering_real_intraq_squant_qimera": "holds",
        "mdc_features_more_diverse": "holds",  # on intra-class diversity, not accuracy
        "w3a3_drops_more": "holds",
        "mdc_beats_adi_w3a3": "holds",
        "mdc_beats_adi_as_paper_ran_it": "holds",
        "ordering_like_for_like": "holds",
        "ordering_w3a3": "holds",
        "ordering_like_for_like_w3a3": "holds",
    }
    lor = next(v for v in report.verdicts if v.claim.key == "lor_extras_add_nothing")
    failing = [p for p in lor.pairs if p.verdict == "fails"]
    assert [(p.a, p.b) for p in failing] == [("L+R", "L")] and failing[0].diff == pytest.approx(3.1)
    glance = _table(report, "MDC vs ADI")
    assert glance.columns[2] == "Verdict (best epoch)" and glance.rows[0][2] == "holds"
    assert glance.rows[0][5] == "mdc − adi: +10.60 [+9.93, +11.27] (n=3, paired)"
    # d = 11, 10.6, 10.2: sd 0.4, se 0.4 / sqrt 3, t(0.95, 2) = 2.919986 -> ± 0.674
    assert glance.rows[0][6] == "mdc − adi: +8.80"  # the paper's gap, 63.77 − 54.97
    order = next(v for v in report.verdicts if v.claim.key == "ordering_real_intraq_squant_qimera")
    assert order.strict_verdict == "holds" and [p.threshold for p in order.pairs] == [-0.5, -0.5, -0.5]


def test_rendered_tables(report: Report) -> None:
    comparison = _table(report, "Real data")
    assert comparison.columns[2:5] == ("Paper (%, paper's setting)", "Ours best epoch (%)", "Ours final epoch (%)")
    assert not any("Δ" in c or "− paper" in c for t in report.blocks if isinstance(t, TableBlock) for c in t.columns)
    assert comparison.rows[0][2:5] == ("67.89", "97.20 ± 0.20 (n=3)", "96.20 ± 0.20 (n=3)")
    assert comparison.rows[0][7] == "CPU fixture-cpu, 2 cores, torch x (seeds 0, 1, 2)"
    assert comparison.rows[0][8] == f"`{_case('comparison', 'real')}`"
    amounts = _table(report, "256")
    assert [r[0] for r in amounts.rows] == ["256", "1,280", "5,120", "10,000", "20,000"]
    assert amounts.rows[0][3] == "88.00 (n=1)" and amounts.rows[2][2] == "66.47"


def test_markdown_and_html_files(fixture_results: Path, tmp_path: Path) -> None:
    files = render_report(PROFILE, fixture_results, tmp_path / "reports")
    md, page = files.markdown.read_text(), files.html.read_text()
    assert "FABRICATED TEST FIXTURE" in md and "FABRICATED TEST FIXTURE" in page
    for table in all_tables():
        assert table.title in md and table.title in page
    for text in ("Compute: wall time", "CPU fixture-cpu, 2 cores, torch x (67 runs)", "fixture_cnn (98.00% test top-1)",
                 "Trap T3", "intra-class diversity", "± = sample standard deviation (ddof 1) over the n seeds",
                 "after calibration* = activation ranges calibrated, before any fine-tuning",
                 "Setting. Paper: ResNet-20, CIFAR-10", "Setting. Paper: ResNet-18, ImageNet", "Holm",
                 "Margins are the suite's (not the paper's)"):
        assert text.lower() in md.lower(), text
    assert {p.name for p in files.figures} == {"data-amount.png", "image-grid.png", "feature-umap.png",
                                               "diversity.png"}
    for path in files.figures:
        assert path.read_bytes().startswith(b"\x89PNG") and f"figures/{path.name}" in md
    # self-contained: every figure inlined, nothing fetched from elsewhere
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
    assert not re.search(r'(src|href)="(?!data:)', page)
    md_tables = sum(1 for line in md.splitlines() if line.startswith("|---"))
    # glance, five tables, eleven accuracy claims, the diversity table and its claim
    assert page.count("<table>") == md_tables == 1 + 5 + 11 + 1 + 1
    assert "ResNet-18 ImageNet" not in md.split("## Claims at a glance")[0]  # the header no longer says so
    assert 'class="v-fails"' in page and 'class="v-inconclusive"' in page and 'class="v-holds"' in page


def test_main_setting_shows_both_drops_from_full_precision(report: Report) -> None:
    main = _table(report, "W4A4")
    assert "Paper drop from FP" in main.columns and "Our drop (teacher − best)" in main.columns
    drop_paper, drop_ours = main.columns.index("Paper drop from FP"), main.columns.index("Our drop (teacher − best)")
    assert [r[0] for r in main.rows] == ["W4A4", "W3A3"]
    assert main.rows[0][drop_paper] == "2.40" and main.rows[1][drop_paper] == "16.82"  # 93.89 - 91.49 / - 77.07
    assert main.rows[0][drop_ours] == "6.90" and main.rows[1][drop_ours] == "17.00"  # teacher 98.0 - mean best
    assert "Paper drop from FP" not in _table(report, "256").columns


def test_diversity_is_measured(report: Report) -> None:
    div = _table(report, "MDC (IntraQ)")
    assert [r[0] for r in div.rows] == ["MDC (IntraQ)", "ADI", "Real data"]
    assert div.rows[0][1] == "0.210 ± 0.010 (n=3)" and div.rows[1][1] == "0.040 ± 0.010 (n=3)"


def test_partial_results_render(tmp_path: Path, fixture_results: Path) -> None:
    """`pytest bench -k data_amount` alone leaves one table: the others show 'no result', nothing breaks."""
    partial = tmp_path / "partial"
    (partial / PROFILE / "cells").mkdir(parents=True)
    for path in (fixture_results / PROFILE / "cells").glob("data_amount--*.json"):
        (partial / PROFILE / "cells" / path.name).write_text(path.read_text())
    report = build_report(load_results(partial, PROFILE))
    assert _table(report, "Real data").rows[0][3] == "no result"
    assert "No figure data" in to_markdown(report)
    verdicts = {v.claim.key: v.verdict for v in report.verdicts}
    assert verdicts["mdc_beats_adi"] == "no results" and verdicts["more_than_5120_adds_little"] == "holds"
    assert verdicts["small_set_within_a_point"] == "inconclusive"  # has results, one seed of 256


def test_intra_class_diversity_metric() -> None:
    import torch

    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mean, per_class = intra_class_diversity(same, torch.tensor([0, 0, 1, 1]))
    assert mean == pytest.approx(0.0) and per_class == {0: pytest.approx(0.0), 1: pytest.approx(0.0)}
    mean, _ = intra_class_diversity(same, torch.tensor([0, 1, 0, 1]))  # orthogonal pairs within a class
    assert mean == pytest.approx(1.0)


def test_cli_report_and_missing_results(fixture_results: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", "--profile", PROFILE, "--results", str(fixture_results), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / PROFILE / "report.html").exists()
    assert "report.html" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="pytest bench --profile nothing"):
        load_results(fixture_results, "nothing")
    assert main(["report", "--profile", "nothing", "--results", str(fixture_results)]) == 2


def test_each_table_states_its_compute(fixture_results: Path) -> None:
    res = load_results(fixture_results, PROFILE)
    line = compute_line(res, get_table("lor"))
    # 4 cells x 3 seeds, 10 s each in the fixture (the shared L+F cell counts here too): 120 s summed; per seed the
    # shared run covers [0, 10] s and the three others [5, 15] s, so 15 s of wall time per seed, 45 s in all
    assert line.startswith("Compute for this table: wall time 0.8 min (while at least one run was running); "
                           "summed run time 2.0 min over 12 runs") and "CPU fixture-cpu" in line


def test_header_points_to_provenance_notes(tmp_path: Path, fixture_results: Path) -> None:
    """A record whose commit was corrected or explained after the run is counted in the header, by commit."""
    noted = tmp_path / "noted"
    (noted / PROFILE / "cells").mkdir(parents=True)
    for path in (fixture_results / PROFILE / "cells").glob("lor--*.json"):
        blob = json.loads(path.read_text())
        if blob["cell"] == "L" and blob["seed"] < 2:
            blob.update(git_commit="abc+dirty", git_commit_note="explained")
        (noted / PROFILE / "cells" / path.name).write_text(json.dumps(blob))
    markdown = to_markdown(build_report(load_results(noted, PROFILE)))
    assert "Provenance notes: 2 of 12 runs carry a `git_commit_note`" in markdown and "2 at abc+dirty" in markdown
    assert "Provenance notes" not in to_markdown(build_report(load_results(fixture_results, PROFILE)))


def test_cli_report_renders_local_results_to_the_local_reports_folder(
    fixture_results: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import shutil

    monkeypatch.delenv("INTRAQ_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(fixture_results / PROFILE, tmp_path / "results" / "local" / PROFILE)
    assert main(["report", "--profile", PROFILE]) == 0
    assert "results/local/fixture" in capsys.readouterr().out
    text = (tmp_path / "reports" / "local" / PROFILE / "report.md").read_text()
    assert "Rendered from the results folder `results/local/fixture/`" in text
    assert not (tmp_path / "reports" / PROFILE).exists()  # the published report is untouched

    shutil.copytree(fixture_results / PROFILE, tmp_path / "results" / PROFILE)
    assert main(["report", "--profile", PROFILE, "--publish"]) == 0
    published = (tmp_path / "reports" / PROFILE / "report.md").read_text()
    assert "Rendered from the results folder `results/fixture/`" in published


def test_header_names_the_data_identities_of_the_records(fixture_results: Path, tmp_path: Path) -> None:
    import shutil

    results = tmp_path / "results"
    shutil.copytree(fixture_results, results)
    cells = sorted((results / PROFILE / "cells").glob("*.json"))
    for path in cells[1:]:  # one row stays as records made before identities existed
        blob = json.loads(path.read_text())
        path.write_text(json.dumps({**blob, "data_identity": "fixture-0123456789abcdef"}))
    md = render_report(PROFILE, results, tmp_path / "reports").markdown.read_text()
    assert "Data (name + content hash, from the records): `fixture-0123456789abcdef`; 1 rows come from records" in md


def _header(results: Path, profile: str) -> str:
    from intraq.report.render import Report, header_blocks

    return to_markdown(Report(profile=profile, blocks=header_blocks(load_results(results, profile))))


def test_header_names_settings_beyond_the_profile(tmp_path: Path, report: Report) -> None:
    """A record made with `--set` (here: fewer epochs) is named in the header; a setting outside the method's
    sections (fine-tuning epochs of SQuant, which does not fine-tune) is not a setting of that run."""
    import shutil

    from intraq.report.overrides import settings_beyond_cell

    results = tmp_path / "results"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "smoke", results / "smoke")
    md = _header(results, "smoke")
    assert "Settings beyond the profile's" in md and "none: every checked run used its profile's settings" in md
    cells = results / "smoke" / "cells"
    for name in ("lor--L-seed0.json", "comparison--squant-seed0.json"):
        blob = json.loads((cells / name).read_text())
        blob["config"]["finetune"]["epochs"] = 2
        blob["config"]["finetune"]["sharpness_iters"] = 7  # a diagnostic: never a setting beyond the cell
        (cells / name).write_text(json.dumps(blob))
    squant, lor_l = (next(c for c in get_table(t).cells if c.key == k)
                     for t, k in (("comparison", "squant"), ("lor", "L")))
    assert settings_beyond_cell(json.loads((cells / "comparison--squant-seed0.json").read_text()), squant) == ()
    assert settings_beyond_cell(json.loads((cells / "lor--L-seed0.json").read_text()), lor_l) == (
        "finetune.epochs=2",
    )
    md = _header(results, "smoke")
    assert re.search(r"Settings beyond the profile's .*: `finetune\.epochs=2` \(1 of \d+ runs\)", md)
    assert "unknown: no run could be checked" in to_markdown(report)  # the fixture's profile is registered nowhere


def test_learning_curve_of_the_shared_cell_beside_other_profiles(tmp_path: Path) -> None:
    """The curve comes from each record's per-epoch history, best epoch as the record says; another profile of
    the same data set is drawn beside it, one of other data is not."""
    import shutil

    from intraq.report.curves import curves_beside, load_curves
    from intraq.report.render import curve_blocks

    results = tmp_path / "results"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "smoke", results / "smoke")
    curves = load_curves(results, "smoke")
    assert [c.seed for c in curves] == [0, 1, 2]
    for curve in curves:
        cell = json.loads((results / "smoke" / "cells" / f"main_cifar10--w4a4-seed{curve.seed}.json").read_text())
        assert curve.best == pytest.approx(cell["accuracy"]["best_epoch"])
        assert max(curve.accuracy) == pytest.approx(curve.best)
    shutil.copytree(results / "smoke", results / "smoke-twin")
    shutil.copytree(results / "smoke", results / "other-data")
    for path in (results / "other-data").glob("*.json"):
        blob = json.loads(path.read_text())
        blob["config"]["data"]["name"] = "something-else"
        blob["data_identity"] = "something-else-0123456789abcdef"
        path.write_text(json.dumps(blob))
    shutil.copytree(results / "smoke", results / "broken")
    (results / "broken" / "cells" / "main_cifar10--w4a4-seed0.json").write_text("{not json")
    for path in (results / "broken").glob("*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "history": [{"acc": 1.0}]}))  # no epoch
    assert list(curves_beside(results, "smoke")) == ["smoke", "smoke-twin"]
    blocks = curve_blocks(load_results(results, "smoke"))
    assert any(getattr(b, "name", "") == "learning-curve.png" and b.png.startswith(b"\x89PNG") for b in blocks)


def test_runs_outside_the_grid_are_drawn_with_what_they_changed(tmp_path: Path) -> None:
    """A record no cell file points to (a run with its own --set) is a curve of its own, labelled with the settings
    it changed against its profile; the cells' records are not repeated there, other data is left out."""
    import shutil

    from intraq.report.curves import curves_outside_grid, load_curves
    from intraq.report.render import blocks_markdown, curve_blocks

    results = tmp_path / "results"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "smoke", results / "smoke")
    own = load_curves(results, "smoke")
    assert curves_outside_grid(results, own) == []  # every record there is a cell's
    cell = json.loads((results / "smoke" / "cells" / "main_cifar10--w4a4-seed0.json").read_text())
    blob = json.loads((results / "smoke" / cell["result_file"]).read_text())
    # a cell's earlier run that a newer one replaced: nothing beyond the profile, so not drawn
    (results / "smoke" / "fedcba987654-seed0.json").write_text(json.dumps(blob))
    blob["config"]["synth"]["num_images"] = 32
    (results / "smoke" / "0123456789ab-seed0.json").write_text(json.dumps(blob))
    foreign = {**blob, "data_identity": "something-else-0123456789abcdef"}
    (results / "smoke" / "ba9876543210-seed0.json").write_text(json.dumps(foreign))
    (outside,) = curves_outside_grid(results, own)
    assert outside.settings == ("synth.num_images=32",)
    assert outside.label == "smoke intraq (synth.num_images=32) seed 0"
    text = blocks_markdown(curve_blocks(load_results(results, "smoke")))
    assert "Runs outside the grid" in text and "synth.num_images=32" in text


def test_a_cells_machine_column_shows_thread_counts_and_paths_that_differ() -> None:
    import pandas as pd

    from intraq.report.render import cell_machines

    cpu, gpu = "CPU x, 2 cores, torch 2", "NVIDIA H100, torch 2"
    rows = pd.DataFrame({"seed": [2, 0, 1, 0], "machine_class": [cpu, cpu, cpu, gpu], "threads": [1, 2, 1, 2],
                         "path": ["reference", "reference", "reference", "fast"]})
    assert cell_machines(rows) == (f"{cpu} (seeds 0 [2 threads], 1 [1 thread], 2 [1 thread]); "
                                   f"{gpu} (seed 0 [fast path])")
    same = rows[rows["seed"] > 0]
    assert cell_machines(same) == f"{cpu} (seeds 1, 2)"  # one count in the class: nothing to annotate


@pytest.mark.parametrize("record, path", [
    ({"method": "squant"}, "reference"),
    ({"finetune_path": "reference", "synthesis": {"batches_by_path": {"fast": 0, "reference": 4}}}, "reference"),
    ({"finetune_path": {"fast": {}}, "synthesis": {"batches_by_path": {"fast": 4, "reference": 0}}}, "fast"),
    ({"finetune_path": {"fast": {}}, "synthesis": {}}, "fast"),  # real data: no batches
    ({"finetune_path": {"fast": {}}, "synthesis": {"batches_by_path": {"fast": 1, "reference": 3}}}, "mixed"),
    ({"finetune_path": "reference", "synthesis": {"batches_by_path": {"fast": 4, "reference": 0}}}, "mixed"),
])
def test_run_path_names_the_implementation_of_every_stage(record, path) -> None:
    from intraq.report.collect import run_path

    assert run_path(record) == path


def _curve(accuracy: list[float], seed: int = 0):
    from intraq.report.curves import Curve

    return Curve(profile="p", seed=seed, epochs=tuple(range(len(accuracy))), accuracy=tuple(accuracy),
                 calibration_epochs=1, best_epoch=None, dataset="d", data_identity=None, machine="m")


def test_stage2_cut_reaches_and_stays_within_the_margin() -> None:
    from intraq.report.curves import stage2_cut

    #                 0     1     2     3     4     5     6     7
    cut = stage2_cut(_curve([80.0, 85.0, 86.8, 86.2, 86.9, 87.0, 86.75, 86.8]), within=0.3)
    assert (cut.best, cut.best_epoch, cut.last_epoch) == (87.0, 5, 7)
    assert cut.reaches == 2  # 86.8 >= 86.7 first at epoch 2
    assert cut.stays == 4  # epoch 3 (86.2) is the last one below 86.7
    flat = stage2_cut(_curve([50.0, 50.0, 50.0]), within=0.0)
    assert (flat.best_epoch, flat.reaches, flat.stays) == (2, 0, 0)  # ties for best go to the later epoch
    declining = stage2_cut(_curve([50.0, 87.0, 86.0, 85.0]), within=0.3)
    assert (declining.reaches, declining.stays) == (1, None)  # it ends below the margin: no final-epoch cut
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="within"):
            stage2_cut(_curve([1.0]), within=bad)


def test_cli_curve_prints_the_cut_and_names_the_fix_without_records(tmp_path: Path, capsys) -> None:
    from intraq.cli import main

    assert main(["curve", "--profile", "smoke", "--results", str(tmp_path)]) == 2
    assert "pytest bench -k \"main_cifar10 and w4a4\" --profile smoke" in capsys.readouterr().err
    assert main(["curve", "--cell", "main_cifar10", "--results", str(tmp_path)]) == 2
    assert "TABLE/CELL" in capsys.readouterr().err
    assert main(["curve", "--within", "-1", "--results", str(tmp_path)]) == 2
    assert "--within -1" in capsys.readouterr().err


def test_cli_curve_reads_run_records_that_are_no_cell(tmp_path: Path, capsys) -> None:
    # e.g. the curve run of issue 17: a profile's cell with its own --set overrides, so no table cell file
    from intraq.cli import main

    smoke = Path(__file__).resolve().parents[1] / "results" / "smoke"
    records = [str(smoke / f"77c90a0f4729-seed{seed}.json") for seed in (0, 1)]
    assert main(["curve", "--record", records[0], "--record", records[1]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the records at smoke: where the test top-1 comes within 0.3 points")
    assert "  seed 0: best " in out and "  seed 1: best " in out and "cut for the best-epoch metric" in out
    assert main(["curve", "--record", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_curve_gives_no_cut_from_a_run_that_diverged(tmp_path: Path, capsys, monkeypatch) -> None:
    import dataclasses

    import intraq.report.curves as curves
    from intraq.cli import main

    diverged = dataclasses.replace(_curve([81.8, 82.5, 82.7, 82.6, 10.0]), diverged_at=4, calibration_epochs=4)
    monkeypatch.setattr(curves, "load_curves", lambda *args, **kwargs: [diverged])
    assert main(["curve", "--profile", "smoke", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no cut: seed 0 diverged at epoch 4" in err and "best in calibration" in err
    # fine-tuning trained, then diverged (the 256-image run of issue 17): a cut, with the caution
    later = dataclasses.replace(_curve([84.2, 84.1, 83.5, 84.2, 86.2, 86.6, 86.4, 17.6, 10.0]), diverged_at=8,
                                calibration_epochs=4)
    monkeypatch.setattr(curves, "load_curves", lambda *args, **kwargs: [later])
    assert main(["curve", "--profile", "smoke", "--results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "caution: seed 0 diverged at epoch 8" in err
    assert "cut for the best-epoch metric: finetune.epochs = 6" in out and "no cut keeps the final-epoch" in out


def _official_record(teacher_id: str, losses: list[float], accuracies: list[float]) -> dict:
    steps = [{"epoch": 4, "step": i, "loss": loss} for i, loss in enumerate(losses)]
    epochs = [{"epoch": e, "test_top1": a, "last_loss": None if e < 4 else losses[-1]}
              for e, a in enumerate(accuracies)]
    return {"official_repo": "zysxmu/IntraQ", "official_commit": "5228f7699fdd", "teacher_id": teacher_id,
            "images": "/somewhere/synthesis/intraq-v2-abc123", "epochs": epochs, "steps": steps}


def _with_diverged_shared_run(tmp_path: Path, fixture_results: Path) -> Path:
    """A copy of the fixture results whose shared cell's seed-0 run diverged at epoch 4, on teacher `feedbeef` and
    the image set folder `intraq-v2-abc123`, at lr 1e-4 with Nesterov momentum 0.9."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(fixture_results, results)
    for path in (results / PROFILE / "cells").glob("*-seed0.json"):
        blob = json.loads(path.read_text())
        if blob["case"] == SHARED:
            blob["accuracy"]["diverged_at_epoch"] = 4
            path.write_text(json.dumps({**blob, "result_file": f"{SHARED}-seed0.json"}))
    run = results / PROFILE / f"{SHARED}-seed0.json"
    run.write_text(json.dumps({
        **json.loads(run.read_text()), "case": SHARED, "seed": 0, "profile": PROFILE, "method": "intraq",
        "accuracy": {"teacher": 98.0, "after_calibration": 80.0, "final_epoch": 10.0, "best_epoch": 82.0,
                     "best_epoch_index": 3, "diverged_at_epoch": 4},
        "teacher": {"name": "fixture_cnn", "sha256": "feedbeef"},
        "config": {"finetune": {"lr": 1e-4, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}},
        "seconds": {"total": 10.0}, "git_commit": "fixture", "machine": {},
        "synthesis": {"cache_dir": "/runs/synthesis/intraq-v2-abc123"}}))
    return results


def test_header_says_how_far_a_diverged_runs_lr_was_from_stable(tmp_path: Path, fixture_results: Path) -> None:
    """Sharpness probes on a diverged run's teacher and images: the header gives their sharpness and the run's lr
    as a multiple of its SGD's stability bound; probes on other inputs or without sharpness are left out."""
    from intraq.finetune.stability import momentum_lr_bound

    results = _with_diverged_shared_run(tmp_path, fixture_results)
    probes = results / "diagnostics" / "finetune-probe"
    probes.mkdir(parents=True)

    def probe(name: str, sharpness: float | None, teacher: str = "feedbeef", folder: str = "intraq-v2-abc123") -> None:
        blob = {"teacher_id": teacher, "image_set": {"cache_dir": f"/elsewhere/synthesis/{folder}"}, "steps": []}
        if sharpness is not None:
            blob["sharpness"] = {"top_eigenvalue": sharpness}
        (probes / f"{name}.json").write_text(json.dumps(blob))

    probe("a", 20000.0)
    probe("b", 22000.4)
    probe("no-sharpness", None)
    probe("other-teacher", 1.0, teacher="another")
    probe("other-set", 1.0, folder="intraq-v2-zzz")
    (probes / "broken.json").write_text("{not json")
    line = next(x for x in _header(results, PROFILE).splitlines() if "How far from stable" in x)
    ratio = 1e-4 / momentum_lr_bound(22000.0 + 1e-4, 0.9, True)
    assert f"sharpness at 20,000 to 22,000, so the run's lr 0.0001 is {ratio:.2f}x" in line
    assert "finetune-probe/a.json" in line and "finetune-probe/b.json" in line
    for left_out in ("no-sharpness", "other-teacher", "other-set", "broken"):
        assert left_out not in line
    assert "How far from stable" not in _header(fixture_results, PROFILE)  # nothing diverged there


def test_a_diverged_run_that_measured_its_own_sharpness_is_stated_from_its_record(
    tmp_path: Path, fixture_results: Path
) -> None:
    """`stage2_sharpness` in the run's record (finetune.sharpness_iters) wins over probes on the same inputs."""
    results = _with_diverged_shared_run(tmp_path, fixture_results)
    run = results / PROFILE / f"{SHARED}-seed0.json"
    own = {"top_eigenvalue": 30000.0, "lr_bound": 5.0e-5, "lr_over_bound": 2.0}
    run.write_text(json.dumps({**json.loads(run.read_text()), "stage2_sharpness": own}))
    alone = next(x for x in _header(results, PROFILE).splitlines() if "How far from stable" in x)  # no probes at all
    assert "the run itself measured the KD loss's sharpness at 30,000" in alone
    probes = results / "diagnostics" / "finetune-probe"
    probes.mkdir(parents=True)
    (probes / "a.json").write_text(json.dumps({"teacher_id": "feedbeef", "steps": [], "sharpness": {
        "top_eigenvalue": 20000.0}, "image_set": {"cache_dir": "/elsewhere/synthesis/intraq-v2-abc123"}}))
    line = next(x for x in _header(results, PROFILE).splitlines() if "How far from stable" in x)
    assert "the run itself measured the KD loss's sharpness at 30,000" in line and "2.00x" in line
    assert "finetune-probe/a.json" not in line


@pytest.mark.parametrize("trained", [False, True])
def test_header_says_what_the_official_trainer_did_on_a_diverged_runs_inputs(
    tmp_path: Path, fixture_results: Path, trained: bool
) -> None:
    """A diverged run with an official-trainer record on the same teacher and images: the header says what the
    authors' code did there; a record on another teacher is not mentioned."""
    results = _with_diverged_shared_run(tmp_path, fixture_results)
    official = results / "diagnostics" / "official-stage2"
    official.mkdir(parents=True)
    losses = [11.0, 12.0, 9.0] if trained else [11.0, 199.0, float("nan")]
    (official / "a.json").write_text(json.dumps(_official_record("feedbeef", losses, [80.0, 81.0, 82.0, 82.5,
                                                                                      84.0 if trained else 10.0])))
    (official / "b.json").write_text(json.dumps(_official_record("another-teacher", [11.0], [1.0] * 5)))
    (official / "broken.json").write_text("{not json")
    header = _header(results, PROFILE)
    line = next(x for x in header.splitlines() if "official stage 2 on the same inputs" in x)
    assert "seed 0: on the same teacher and images, the authors' trainer (zysxmu/IntraQ@5228f76)" in line
    assert "after calibration 82.50%" in line and "results/diagnostics/official-stage2/a.json" in line
    if trained:
        assert "trained: " in line and "best 84.00% at epoch 4 of the 5 it ran" in line
    else:
        assert "diverged too: " in line and "non-finite loss at fine-tuning step 2 (epoch 4), 10.00% after it" in line
    assert "b.json" not in header
    assert "official stage 2" not in _header(fixture_results, PROFILE)  # nothing diverged there
    for path in (results / PROFILE / "cells").glob("lor--*-seed0.json"):  # a cell file without result_file
        blob = json.loads(path.read_text())
        blob["accuracy"]["diverged_at_epoch"] = 5
        path.write_text(json.dumps(blob))
    assert line in _header(results, PROFILE).splitlines()


def test_calibration_epochs_are_counted_in_both_history_kinds() -> None:
    """KD fine-tuning names the phase, Qimera's joint loop flags `calibrating`: a curve's calibration epochs (where
    `intraq curve` may not cut) come from either."""
    from intraq.report.curves import record_curve

    smoke = Path(__file__).resolve().parents[1] / "results" / "smoke"
    qimera = record_curve(smoke / "56a83ed6bbde-seed0.json")
    history = json.loads((smoke / "56a83ed6bbde-seed0.json").read_text())["history"]
    assert qimera is not None and qimera.calibration_epochs == sum(1 for h in history if h["calibrating"]) > 0
    kd = record_curve(smoke / "77c90a0f4729-seed0.json")
    assert kd is not None and kd.calibration_epochs == json.loads(
        (smoke / "77c90a0f4729-seed0.json").read_text())["config"]["finetune"]["calib_epochs"] > 0
