"""Studies as files: a TOML file with the fields of a profile, so a user's own setting is a file they can commit.

    profile = "my-study"        # names the results folder; must not be a built-in profile's name
    base = "smoke"              # optional: start from this built-in profile (default: the config defaults)
    seed = 0
    [data]
    name = "grey28"
    loader = "image-folder"
    root = "/data/grey28"
    [synth]
    num_images = 256

Every other field keeps the base's value. The file goes through the same parsing and checks as `--set`
overrides, so a bad value is the same one-line error. `intraq profiles --show NAME` writes a built-in profile
in this form.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from intraq.config import RunConfig, apply_overrides, from_dict, to_dict
from intraq.errors import UserInputError
from intraq.profiles import PROFILES, get_profile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOP_LEVEL = ("profile", "seed")
SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in TOP_LEVEL)


def _as_override(value: Any) -> str:
    """A TOML value as the text `--set` parses (lists become tuples, booleans true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_as_override(v) for v in value)
    return str(value)


def overrides_from_mapping(data: dict[str, Any], where: str) -> list[str]:
    """`section.field=value` strings for every value of a parsed study file."""
    overrides: list[str] = []
    for key, value in data.items():
        if key == "base":
            continue
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise UserInputError(f"{where}: unknown section [{key}]; sections: {', '.join(SECTIONS)}")
            overrides += [f"{key}.{name}={_as_override(v)}" for name, v in value.items()]
        elif key in TOP_LEVEL:
            overrides.append(f"{key}={_as_override(value)}")
        else:
            raise UserInputError(f"{where}: unknown key {key!r}; top-level keys: base, {', '.join(TOP_LEVEL)}")
    return overrides


def load_config_file(path: str | Path) -> RunConfig:
    """The `RunConfig` a study file describes; errors name the file and what to fix."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} is not valid TOML ({exc})") from exc
    name = data.get("profile")
    if not isinstance(name, str) or not name:
        raise UserInputError(f'{path}: set profile = "NAME" (it names the study\'s results folder)')
    base_name = data.get("base")
    base = get_profile(base_name) if base_name else RunConfig()
    try:
        cfg = apply_overrides(base, overrides_from_mapping(data, str(path)))
    except UserInputError as exc:
        raise UserInputError(f"{path}: {exc}") from None
    if name in PROFILES and to_dict(cfg) != to_dict(get_profile(name)):
        raise UserInputError(
            f"{path}: profile {name!r} is a built-in profile's name but the file changes its settings; give the "
            "study its own name so that its results never mix with the built-in profile's"
        )
    return cfg


def register_study(path: str | Path) -> str:
    """Load a study file and register it as a profile under its own name, so that every runner that takes a
    profile name (the bench, `intraq campaign`, `status`, `report`) runs it; returns that name. Registering the
    same file twice is fine; another file under a name already taken is an error."""
    cfg = load_config_file(path)
    if cfg.profile in PROFILES:
        if to_dict(get_profile(cfg.profile)) != to_dict(cfg):
            raise UserInputError(f"{path}: profile {cfg.profile!r} is already registered with other settings")
        return cfg.profile
    frozen = to_dict(cfg)
    PROFILES.register(cfg.profile)(lambda: from_dict(RunConfig, frozen))
    return cfg.profile


def resolve_profile(name_or_file: str) -> str:
    """A profile name as given, or the name of the study file given instead (`--profile my-study.toml`)."""
    if name_or_file.endswith(".toml"):
        return register_study(name_or_file)
    return name_or_file


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def to_toml(cfg: RunConfig) -> str:
    """A config as a study file (fields that are None are left out: None is their default)."""
    import tomli_w

    data = _drop_none(to_dict(cfg))
    top = {k: data.pop(k) for k in TOP_LEVEL}
    return tomli_w.dumps({**top, **data})
