"""Every method is one registered entry with one outcome type; the pipeline has no per-method branches."""

import re
from pathlib import Path

import pytest

from intraq.config import apply_overrides
from intraq.methods import METHODS, Method, MethodContext, MethodOutcome, get_method
from intraq.methods.base import BASE_SECTIONS
from intraq.pipeline import RunPaths, case_hash, relevant_config, run_case_record
from intraq.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_is_registered_on_import():
    assert set(METHODS.names()) == {"intraq", "adi", "deepinversion", "deepinversion-adi", "gdfq", "real", "qimera",
                                    "squant"}
    for name in METHODS.names():
        method = get_method(name)
        assert method.name == name and method.summary
        assert set(method.sections) <= {"synth", "finetune", "qimera", "squant"}
    assert [n for n in METHODS.names() if get_method(n).makes_images] == [
        "adi", "deepinversion", "deepinversion-adi", "gdfq", "intraq", "real"]


def test_no_special_case_sets_are_left():
    pattern = re.compile(r"PTQ_METHODS|JOINT_METHODS|_register_methods")
    hits = [str(p) for folder in ("intraq", "bench") for p in (ROOT / folder).rglob("*.py")
            if pattern.search(p.read_text())]
    assert hits == []


def test_relevant_config_is_the_base_plus_the_methods_sections():
    cfg = apply_overrides(get_profile("smoke"), ["synth.method=qimera"])
    assert list(relevant_config(cfg)) == [*BASE_SECTIONS, "qimera"]


class ConstantMethod(Method):
    """A stand-in baseline: what a new method file has to provide, and nothing more."""

    name, summary, sections = "constant", "test stand-in", ("squant",)

    def run(self, ctx: MethodContext) -> MethodOutcome:
        assert ctx.run_dir.name == f"{case_hash(ctx.cfg)}-seed{ctx.cfg.seed}"
        return MethodOutcome(
            after_calibration=10.0, final_epoch=20.0, best_epoch=30.0, best_epoch_index=2, seconds={"work": 1.5},
            history=[{"epoch": 2, "acc": 30.0}], extras={"constant": {"why": "a test"}},
        )


@pytest.fixture
def constant_method(monkeypatch):
    monkeypatch.setitem(METHODS._items, "constant", ConstantMethod())
    yield


def test_a_new_method_runs_through_the_pipeline_with_one_registration(tmp_path, constant_method):
    cfg = apply_overrides(get_profile("smoke"), ["synth.method=constant", "teacher.train_epochs=1"])
    paths = RunPaths(artifacts=tmp_path / "artifacts", results=tmp_path / "results")
    record = run_case_record(cfg, paths, progress=False)
    assert record.method == "constant" and record.case == case_hash(cfg)
    acc = record.accuracy
    assert (acc["after_calibration"], acc["final_epoch"], acc["best_epoch"], acc["best_epoch_index"]) == (
        10.0, 20.0, 30.0, 2)
    assert acc["diverged_at_epoch"] is None and 0 < acc["teacher"] <= 100
    assert list(record.seconds) == ["data", "teacher", "work", "total"]
    stored = record.to_dict()
    assert stored["constant"] == {"why": "a test"} and stored["history"] == [{"epoch": 2, "acc": 30.0}]
    assert run_case_record(cfg, paths, progress=False).finished == record.finished  # reused, not rerun


def test_the_cli_lists_methods_from_the_registry(capsys):
    from intraq.cli import main, make_parser

    assert main(["methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == METHODS.names()
    run_help = make_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert all(name in run_help for name in METHODS.names())
    generate_help = make_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    assert "deepinversion" in generate_help and "squant" not in generate_help


def test_adi_as_the_paper_ran_it_is_deepinversion_with_the_competition_term(monkeypatch):
    """`deepinversion-adi`: DeepInversion's preset with ADI's weight and temperature from the config, and a student."""
    import intraq.synthesis.deepinversion as di_module
    from intraq.methods.deepinversion import _deepinversion_adi
    from intraq.methods.intraq import AdiMethod
    from intraq.profiles import get_profile

    seen = {}
    monkeypatch.setattr(di_module, "generate_deepinversion", lambda ctx, di: seen.setdefault("di", di))

    class Ctx:
        cfg = get_profile("smoke")
        data = type("Data", (), {"name": "digits", "image_size": 16})()

    _deepinversion_adi(Ctx())
    plain = di_module.effective_config(Ctx.cfg, "digits", 16)
    assert (seen["di"].adi_scale, seen["di"].adi_temperature) == (0.2, 3.0) and plain.adi_scale == 0.0
    assert {k: v for k, v in vars(seen["di"]).items() if not k.startswith("adi_")} == {
        k: v for k, v in vars(plain).items() if not k.startswith("adi_")}
    assert isinstance(get_method("deepinversion-adi"), AdiMethod)  # it competes with a student, as ADI does
