"""A user's runs never write (or get served from) the published results; a reused result says so on one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intraq import __version__
from intraq.cli import main
from intraq.results import default_reports_dir, default_results_dir


def test_default_results_dir(monkeypatch):
    monkeypatch.delenv("INTRAQ_RESULTS", raising=False)
    assert default_results_dir(publish=False) == Path("results/local")
    assert default_results_dir(publish=True) == Path("results")
    assert default_reports_dir(publish=False) == Path("reports/local")
    assert default_reports_dir(publish=True) == Path("reports")
    monkeypatch.setenv("INTRAQ_RESULTS", "/somewhere/mine")
    assert default_results_dir(publish=False) == default_results_dir(publish=True) == Path("/somewhere/mine")


def test_bench_writes_local_results_unless_published(monkeypatch):
    import importlib.util
    import sys

    monkeypatch.delenv("INTRAQ_RESULTS", raising=False)
    spec = importlib.util.spec_from_file_location("bench_conftest", Path(__file__).parents[1] / "bench" / "conftest.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_conftest", bench)
    spec.loader.exec_module(bench)

    class Config:
        def __init__(self, **options):
            self.options = {"profile": "smoke", "seeds": 1, "results": None, "publish": False, "artifacts": None,
                            "data_root": None, "device": "cpu", "threads": 1, "compile": False,
                            "bench_overrides": [], "default_case_seconds": None, "fast": None,
                                "same_machine": False, **options}
            self.stash: dict = {}

        def getoption(self, name):
            return self.options[name]

    assert bench._options(Config()).results == Path("results/local")
    assert bench._options(Config(publish=True)).results == Path("results")
    assert bench._options(Config(results="elsewhere")).results == Path("elsewhere")


def _run(tmp_path, tiny_overrides, *extra):
    args = ["run", "--profile", "smoke", "--method", "squant", "--quiet", "--artifacts", str(tmp_path / "a"), *extra]
    for item in tiny_overrides:
        args += ["--set", item]
    return main(args)


def test_run_writes_local_results_and_announces_a_reuse(tmp_path, tiny_overrides, monkeypatch, capsys):
    monkeypatch.delenv("INTRAQ_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _run(tmp_path, tiny_overrides) == 0
    first = capsys.readouterr().out
    stored = list((tmp_path / "results" / "local" / "smoke").glob("*-seed0.json"))
    assert len(stored) == 1 and "reused" not in first and "wall time" in first
    assert not (tmp_path / "results" / "smoke").exists()

    assert _run(tmp_path, tiny_overrides) == 0
    second = capsys.readouterr().out
    record = json.loads(stored[0].read_text())
    reuse = [line for line in second.splitlines() if line.startswith("reused")]
    assert len(reuse) == 1
    for part in (str(stored[0].relative_to(tmp_path)), record["machine"]["hostname"], record["finished"], "--force"):
        assert part in reuse[0]
    assert "stored run's wall time" in second

    assert _run(tmp_path, tiny_overrides, "--force") == 0
    assert "reused" not in capsys.readouterr().out
    assert json.loads(stored[0].read_text())["seconds"] != record["seconds"]  # recomputed, not reused

    assert _run(tmp_path, tiny_overrides, "--publish") == 0  # only --publish writes the published folder
    assert len(list((tmp_path / "results" / "smoke").glob("*-seed0.json"))) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"intraq-bench {__version__} (commit ") and "torch" in out


@pytest.mark.parametrize("option", [["--data-root", "/data/cifar10"], ["--set", "data.root=/data/cifar10"]])
def test_a_data_root_with_embedded_data_is_an_error(tmp_path, capsys, option):
    assert main(["run", "--profile", "smoke", *option, "--artifacts", str(tmp_path), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "embedded digits data" in err and "/data/cifar10" in err and "--profile cifar10-cpu" in err
    assert not any(tmp_path.iterdir())  # failed before any work


def test_the_paper_steps_leave_published_results_and_reports_untouched(tmp_path, tiny_overrides, monkeypatch):
    """`tox -e paper`'s two commands, at a tiny size, in a checkout whose results/ and reports/ hold records."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    published = {
        tmp_path / "results" / "smoke" / "cells" / "main_cifar10--w4a4-seed0.json": '{"published": true}\n',
        tmp_path / "reports" / "smoke" / "report.md": "published report\n",
    }
    for path, text in published.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "INTRAQ_RESULTS"}
    env.update(PYTHONPATH=str(repo), INTRAQ_ARTIFACTS=str(tmp_path / "artifacts"), OMP_NUM_THREADS="1")
    sets = [arg for item in tiny_overrides for arg in ("--set", item)]
    bench = subprocess.run(
        [sys.executable, "-m", "pytest", str(repo / "bench" / "test_tables.py"), "-q", "--profile", "smoke",
         "--seeds", "1", "-k", "main_cifar10 and w4a4", "-p", "no:cacheprovider", *sets],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    monkeypatch.delenv("INTRAQ_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--profile", "smoke"]) == 0

    for path, text in published.items():
        assert path.read_text() == text
    assert sorted(p.name for p in (tmp_path / "results" / "smoke").rglob("*") if p.is_file()) == [
        "main_cifar10--w4a4-seed0.json"]
    assert list((tmp_path / "results" / "local" / "smoke" / "cells").glob("main_cifar10--w4a4-seed0.json"))
    assert "`results/local/smoke/`" in (tmp_path / "reports" / "local" / "smoke" / "report.md").read_text()
