"""Every config value is checked when the config is built: a bad one is a one-line error before any work."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from intraq.cli import main
from intraq.config import RunConfig, apply_overrides, from_dict, to_dict
from intraq.errors import UserInputError
from intraq.profiles import PROFILES, get_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("quant.act_bits=0", "quant.act_bits=0: bits must be >= 1"),
        ("quant.weight_bits=-3", "quant.weight_bits=-3: bits must be >= 1"),
        ("squant.last_layer_input_bits=0", "squant.last_layer_input_bits=0: bits must be >= 1"),
        ("seed=-1", "seed=-1: seeds must be >= 0"),
        ("teacher.train_seed=-2", "teacher.train_seed=-2: seeds must be >= 0"),
        ("synth.num_images=0", "synth.num_images=0: must be >= 1"),
        ("synth.iterations=0", "synth.iterations=0: must be >= 1"),
        ("synth.batch_size=0", "synth.batch_size=0: must be >= 1"),
        ("finetune.epochs=0", "finetune.epochs=0: must be >= 1"),
        ("finetune.batch_size=0", "finetune.batch_size=0: must be >= 1"),
        ("qimera.iters_per_epoch=0", "qimera.iters_per_epoch=0: must be >= 1"),
        ("qimera.mix_prob=1.5", "qimera.mix_prob=1.5: must be in [0, 1]"),
        ("synth.lor_prob=-0.1", "synth.lor_prob=-0.1: must be in [0, 1]"),
        ("synth.target_pro=2", "synth.target_pro=2.0: must be in [0, 1]"),
        ("finetune.calib_epochs=12", "finetune.calib_epochs=12: must be < finetune.epochs=12"),
        ("synth.lr=0", "synth.lr=0.0: must be > 0"),
        ("synth.lr=nan", "synth.lr=nan: expected a finite number"),
        ("finetune.crop_scale=0.9,0.5", "finetune.crop_scale=(0.9, 0.5)"),
        ("synth.method=nosuch", "synth.method='nosuch': unknown method; known: adi, deepinversion"),
        ("synth.lor=L+X", "expected one of none, L, L+F, L+R, L+R+F"),
        ("synth.variant=script", "expected one of paper, official-script"),
        ("quant.act_ema=broken", "expected one of correct, official"),
        ("squant.mode=squant-x", "expected one of squant-e, squant-k, squant-c, squant"),
        ("qimera.embedding=fc", "expected one of random, teacher-fc"),
        ("finetune.calib_source=real", "expected one of gdfq, train"),
        ("teacher.source=hub", "expected one of local, torchvision, pytorchcv"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_the_field(override, message):
    with pytest.raises(UserInputError) as caught:
        apply_overrides(get_profile("smoke"), [override])
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_overrides_are_checked_together_not_one_by_one():
    """Raising calib_epochs above the old epochs is fine when epochs rises in the same build."""
    cfg = apply_overrides(get_profile("smoke"), ["finetune.calib_epochs=20", "finetune.epochs=30"])
    assert (cfg.finetune.calib_epochs, cfg.finetune.epochs) == (20, 30)


def test_every_problem_is_listed_on_one_line():
    with pytest.raises(UserInputError) as caught:
        apply_overrides(get_profile("smoke"), ["quant.act_bits=0", "seed=-1"])
    assert "quant.act_bits=0" in str(caught.value) and "seed=-1" in str(caught.value)


@pytest.mark.parametrize("name", PROFILES.names())
def test_every_profile_is_valid(name):
    apply_overrides(get_profile(name), [])


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("quant", "act_bits", 0, "quant.act_bits=0"),
        ("quant", "act_bits", "4", "quant.act_bits='4': expected an integer"),
        ("synth", "lor", "L+X", "synth.lor='L+X': expected one of"),
        ("finetune", "flip", "yes", "finetune.flip='yes': expected true or false"),
        ("synth", "method", "nosuch", "unknown method"),
    ],
)
def test_from_dict_checks_the_config(section, key, value, message):
    data = to_dict(get_profile("smoke"))
    data[section][key] = value
    with pytest.raises(UserInputError, match="bad config") as caught:
        from_dict(RunConfig, data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--set", "quant.act_bits=0"], "quant.act_bits=0: bits must be >= 1"),
        (["run", "--seed", "-1"], "seed=-1: seeds must be >= 0"),
        (["run", "--method", "nosuch"], "unknown method"),
        (["generate", "--method", "squant"], "method 'squant' makes no image set"),
        (["run", "--set", "synth.lor=bogus"], "synth.lor='bogus': expected one of"),
    ],
)
def test_cli_bad_values_exit_2_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    import intraq.data

    def no_work(*_args, **_kwargs):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(intraq.data, "build_data", no_work)
    assert main([*args, "--quiet", "--artifacts", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("args", [["--profile", "nosuch"], ["--method", "nosuch"]])
def test_unknown_profile_or_method_fails_without_importing_torch(tmp_path, args):
    """torch takes seconds to import; a typo must not wait for it (or for data and teacher)."""
    code = (
        "import sys\nfrom intraq.cli import main\n"
        f"code = main(['run', *{args!r}, '--artifacts', {str(tmp_path)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)\n"
    )
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    seconds = time.perf_counter() - tic
    assert done.returncode == 2, done.stderr
    assert "intraq: error:" in done.stderr and "torch was imported" not in done.stderr
    assert seconds < 5.0  # about 0.3 s on a 2-core CPU (torch's import alone takes several seconds there)
