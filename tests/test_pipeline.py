"""End to end on the embedded digits data: the real-data source through quantize -> calibrate -> fine-tune."""

import json

import pytest

from intraq.cli import main
from intraq.config import apply_overrides
from intraq.errors import UserInputError
from intraq.pipeline import RunPaths, case_hash, run_case
from intraq.profiles import get_profile


@pytest.fixture
def paths(tmp_path):
    return RunPaths(artifacts=tmp_path / "artifacts", results=tmp_path / "results")


def test_smoke_real_case_end_to_end_and_reuse(paths, tiny_overrides):
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=real"])
    record = run_case(cfg, paths, progress=False)
    acc = record["accuracy"]
    assert set(acc) >= {"teacher", "after_calibration", "final_epoch", "best_epoch", "best_epoch_index"}
    assert acc["teacher"] > 50.0
    assert 0.0 <= acc["final_epoch"] <= 100.0 and acc["best_epoch"] >= acc["final_epoch"]
    for key in ("config", "seed", "git_commit", "machine", "seconds", "case"):
        assert key in record
    assert record["case"] == case_hash(cfg)
    assert {"generation", "calibration", "finetune", "evaluation", "total"} <= set(record["seconds"])
    assert record["quantization"]["weight_bits"] == [4] and record["quantization"]["act_bits"] == [4]
    stored = paths.results / "smoke" / f"{record['case']}-seed0.json"
    assert json.loads(stored.read_text())["accuracy"] == acc
    # A second call reuses the stored result instead of recomputing.
    assert run_case(cfg, paths, progress=False)["finished"] == record["finished"]


def test_case_hash_depends_on_what_matters(tiny_overrides):
    base = apply_overrides(get_profile("smoke"), tiny_overrides)
    assert case_hash(base) == case_hash(apply_overrides(base, ["seed=5"]))  # seeds are runs of one case
    assert case_hash(base) != case_hash(apply_overrides(base, ["quant.act_bits=3"]))
    squant = apply_overrides(base, ["synth.method=squant"])
    assert case_hash(squant) == case_hash(apply_overrides(squant, ["finetune.lr=0.5"]))  # PTQ ignores fine-tuning


def test_cli_run_prints_the_accuracies(tmp_path, capsys, tiny_overrides):
    args = ["run", "--profile", "smoke", "--method", "real", "--quiet", "--artifacts", str(tmp_path / "a"),
            "--results", str(tmp_path / "r")]
    for item in tiny_overrides:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    for label in ("teacher (full precision)", "W4A4 after calibration only", "W4A4 final epoch", "W4A4 best epoch"):
        assert label in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--profile", "nope"], "unknown profile 'nope'"),
        (["run", "--profile", "cifar10-cpu"], "data.root"),
        (["run", "--profile", "cifar10-cpu", "--data-root", "/no/such/dir"], "/no/such/dir"),
        (["run", "--set", "synth.bogus=1"], "unknown field 'bogus'"),
        (["run", "--method", "nope", "--set", "teacher.train_epochs=1"], "synth.method='nope': unknown method"),
        (["run", "--fast", "graphs", "--device", "cpu"], "unknown fast-path capture 'graphs'"),
        (["run", "--fast", "cudagraph", "--device", "cpu"], "needs a CUDA device"),
    ],
)
def test_cli_bad_input_fails_with_a_fix(tmp_path, capsys, args, message):
    code = main([*args, "--quiet", "--artifacts", str(tmp_path / "a"), "--results", str(tmp_path / "r")])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("method", ["intraq", "adi", "gdfq", "deepinversion", "qimera", "squant"])
def test_every_method_runs_through_the_pipeline(paths, tiny_overrides, method):
    extra = ["qimera.epochs=3", "qimera.calib_epochs=1", "qimera.warmup_epochs=1", "qimera.iters_per_epoch=3",
             "qimera.batch_size=16"]
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, *extra, f"synth.method={method}"])
    record = run_case(cfg, paths, progress=False)
    acc = record["accuracy"]
    assert record["method"] == method
    for key in ("after_calibration", "final_epoch", "best_epoch"):
        assert 0.0 <= acc[key] <= 100.0
    if method == "squant":
        assert acc["after_calibration"] == acc["final_epoch"] == acc["best_epoch"]  # PTQ: one evaluation
    if method in ("intraq", "adi", "gdfq", "deepinversion"):
        assert record["synthesis"]["method"] == method


def test_a_result_from_another_teacher_is_never_replaced_silently(paths, tiny_overrides):
    """Results of two teachers never overwrite each other: the run stops and names the fixes; --force replaces."""
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=squant"])
    record = run_case(cfg, paths, progress=False)
    stored = paths.results / "smoke" / f"{record['case']}-seed0.json"
    stale = dict(record, teacher=dict(record["teacher"], sha256="0" * 64))
    stored.write_text(json.dumps(stale))
    before = stored.read_bytes()
    with pytest.raises(UserInputError, match=r"teacher sha256 000000000000.*own profile name.*--force"):
        run_case(cfg, paths, progress=False)
    assert stored.read_bytes() == before
    fresh = run_case(cfg, paths, progress=False, force=True)
    assert fresh["teacher"]["sha256"] == record["teacher"]["sha256"]


def test_git_commit_of_a_copied_tree_comes_from_the_sender(tmp_path, monkeypatch):
    from intraq.results import git_commit

    monkeypatch.delenv("INTRAQ_GIT_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path
    assert git_commit(tmp_path) == "unknown"
    assert git_commit() != "unknown"  # inside the checkout git itself answers
    monkeypatch.setenv("INTRAQ_GIT_COMMIT", "0123abcd")
    assert git_commit(tmp_path) == "0123abcd"
    assert git_commit() == "0123abcd"  # the sender's word wins over a possibly stale .git


def test_git_commit_is_dirty_for_changed_code_but_not_for_changed_outputs(tmp_path, monkeypatch):
    """A bench run rewrites committed cell files under results/; the next run's code is still the commit's."""
    import subprocess

    from intraq.results import git_commit

    monkeypatch.delenv("INTRAQ_GIT_COMMIT", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    for name in ("code.py", "results/smoke/cells/a.json", "reports/smoke/report.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    (tmp_path / "results/smoke/cells/a.json").write_text("v2\n")
    (tmp_path / "reports/smoke/report.md").write_text("v2\n")
    (tmp_path / "results/smoke/new.json").write_text("untracked\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("v2\n")
    assert git_commit(tmp_path) == head + "+dirty"
    assert git_commit(tmp_path / "results") == head + "+dirty"  # asked from a subfolder, the code still counts


def test_the_fast_path_runs_a_case_and_says_so_in_its_record(paths, tiny_overrides):
    cfg = apply_overrides(get_profile("smoke"), tiny_overrides)
    record = run_case(cfg, paths, progress=False, fast="none")
    assert record["case"] == case_hash(cfg)  # how it ran is not what it is
    assert record["finetune_path"]["fast"]["capture"] == "none"
    assert record["synthesis"]["batches_by_path"] == {"fast": 2, "reference": 0}
    assert [h["epoch"] for h in record["history"]] == [0, 1, 2] and record["accuracy"]["best_epoch"] > 0
    assert not list((paths.artifacts / "runs").glob("*/finetune*.pt"))  # checkpoints go with the record
    reference = run_case(cfg, RunPaths(paths.artifacts, paths.results / "ref"), progress=False)
    assert reference["finetune_path"] == "reference"
    assert reference["synthesis"]["reused_batches"] == 2  # the fast path's batch files serve the reference too


@pytest.mark.parametrize("fast, other", [("none", "finetune.pt"), (None, "finetune-fast.pt")])
def test_a_stage2_checkpoint_of_the_other_path_is_never_thrown_away(paths, tiny_overrides, fast, other):
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=real"])
    waiting = paths.artifacts / "runs" / f"{case_hash(cfg)}-seed0" / other
    waiting.parent.mkdir(parents=True)
    waiting.write_bytes(b"an interrupted stage 2")
    with pytest.raises(UserInputError, match="cannot continue.*delete that file"):
        run_case(cfg, paths, progress=False, fast=fast)
    assert waiting.read_bytes() == b"an interrupted stage 2"


def test_a_method_without_a_fast_path_says_so(paths, tiny_overrides, capsys):
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=squant"])
    run_case(cfg, paths, progress=False, fast="auto")
    assert "method 'squant' has none; it runs on the reference path" in capsys.readouterr().err


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_campaign_refuses_a_bad_fast_capture_before_submitting(tmp_path, capsys, executor):
    code = main(["campaign", "--profile", "smoke", "--executor", executor, "--fast", "graphs", "--results",
                 str(tmp_path / "r"), "--artifacts", str(tmp_path / "a")])
    assert code == 2 and "unknown fast-path capture 'graphs'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing submitted, no job folder


def test_a_forced_rerun_never_resumes_the_finished_runs_own_checkpoint(paths, tiny_overrides):
    """A checkpoint of the stored record's own run (left when it stopped between writing its record and deleting
    it) is dropped by --force instead of resumed: resuming this one would fail (no student in it)."""
    from intraq.artifacts import save_torch

    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=real"])
    record = run_case(cfg, paths, progress=False)
    stale = paths.artifacts / "runs" / f"{record['case']}-seed0" / "finetune.pt"
    save_torch({"sittings": record["finetune_sittings"], "epoch": 1}, stale)
    again = run_case(cfg, paths, progress=False, force=True)
    assert again["accuracy"]["best_epoch"] > 0


def test_only_the_finished_runs_own_checkpoint_is_stale(paths, tiny_overrides):
    from intraq.artifacts import save_torch
    from intraq.pipeline import _drop_stale_checkpoints
    from intraq.results import read_result

    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=real"])
    record = run_case(cfg, paths, progress=False)
    stored = read_result(paths.results / "smoke" / f"{record['case']}-seed0.json")
    run_dir = paths.artifacts / "runs" / f"{record['case']}-seed0"
    own, other = run_dir / "finetune.pt", run_dir / "finetune-fast.pt"
    save_torch({"sittings": record["finetune_sittings"], "epoch": 1}, own)
    save_torch({"sittings": [{"started": "an interrupted forced re-run"}], "epoch": 1}, other)
    _drop_stale_checkpoints(run_dir, stored)
    assert not own.exists() and other.exists()
