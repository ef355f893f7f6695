"""Study files (`--config FILE.toml`): the same fields as the built-in profiles, the same checks as `--set`."""

from __future__ import annotations

from pathlib import Path

import pytest

from intraq.cli import main
from intraq.config import to_dict
from intraq.config_file import load_config_file, to_toml
from intraq.errors import UserInputError
from intraq.profiles import PROFILES, get_profile


@pytest.mark.parametrize("name", PROFILES.names())
def test_every_profile_round_trips_through_a_study_file(tmp_path: Path, name: str):
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(get_profile(name)))
    assert to_dict(load_config_file(path)) == to_dict(get_profile(name))


def test_a_study_starts_from_its_base_and_changes_what_it_names(tmp_path: Path):
    path = tmp_path / "study.toml"
    path.write_text(
        'profile = "my-study"\nbase = "smoke"\nseed = 3\n[data]\nname = "grey28"\nloader = "image-folder"\n'
        'mean = [0.5]\nstd = [0.25]\n[synth]\nnum_images = 128\nmdc = false\n[finetune]\ncrop_scale = [0.3, 1.0]\n'
    )
    cfg = load_config_file(path)
    smoke = get_profile("smoke")
    assert (cfg.profile, cfg.seed, cfg.data.name, cfg.data.loader) == ("my-study", 3, "grey28", "image-folder")
    assert cfg.data.mean == (0.5,) and cfg.data.std == (0.25,)
    assert cfg.synth.num_images == 128 and cfg.synth.mdc is False and cfg.finetune.crop_scale == (0.3, 1.0)
    assert cfg.synth.iterations == smoke.synth.iterations and cfg.teacher == smoke.teacher


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('base = "smoke"\n', r'set profile = "NAME"'),
        ('profile = "x"\n[nosuch]\na = 1\n', r"unknown section \[nosuch\]"),
        ('profile = "x"\ncolour = 1\n', "unknown key 'colour'"),
        ('profile = "x"\n[synth]\nnum_imagez = 1\n', "unknown field 'num_imagez'"),
        ('profile = "x"\n[synth]\nnum_images = "many"\n', "expected a int"),
        ('profile = "x"\nbase = "nosuch"\n', "nosuch"),
        ('profile = "smoke"\n[synth]\nnum_images = 1\n', "built-in profile's name"),
        ('profile = "x"\n[synth\n', "not valid TOML"),
    ],
)
def test_bad_study_files_name_the_file_and_the_fix(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=message):
        load_config_file(path)


def test_cli_reads_a_study_file_and_prints_a_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["profiles", "--show", "cifar10"]) == 0
    shown = capsys.readouterr().out
    assert 'profile = "cifar10"' in shown and "[finetune]" in shown
    path = tmp_path / "c.toml"
    path.write_text(shown.replace('profile = "cifar10"', 'profile = "c10-copy"'))
    assert main(["run", "--config", str(path), "--print-config"]) == 0
    assert '"profile": "c10-copy"' in capsys.readouterr().out
    assert main(["run", "--config", str(path), "--profile", "smoke", "--print-config"]) == 2
    assert main(["run", "--config", str(tmp_path / "missing.toml"), "--print-config"]) == 2
