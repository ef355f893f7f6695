"""Which settings a run used beyond its cell: the record's config against the cell's config at its profile.

The report header names them, so a table run with `--set finetune.epochs=2` (or a record made before a profile
changed) can never pass for the profile's own settings. Computed from the records alone; location fields (where
data and teachers live) and diagnostics (measurements that change no number) are not settings and are left out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from intraq.config import DIAGNOSTIC_FIELDS, LOCATION_FIELDS

if TYPE_CHECKING:
    from intraq.config import RunConfig
    from intraq.tables import Cell

IGNORED = {*LOCATION_FIELDS, *DIAGNOSTIC_FIELDS, "seed", "profile"}  # diagnostics change no number of a run


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """`{"synth": {"lr": 0.5}}` -> `{"synth.lr": 0.5}` (one level of sections, as RunConfig has)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{field}": v for field, v in value.items()})
        else:
            out[key] = value
    return out


def _setting(key: str, value: Any) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def settings_beyond_cell(blob: dict[str, Any], cell: Cell | None) -> tuple[str, ...] | None:
    """`field=value` for each setting of a cell file's record that differs from its `cell`'s config at its profile
    today, over the sections that decide the method's numbers (those its case hash covers); None when that
    cannot be known (a profile not registered here, an unknown cell, no stored config).

    A field the record lacks was added after it ran and held its default then; a field the config no longer
    has is not a setting of today's code: neither is listed."""
    from intraq.profiles import PROFILES
    from intraq.tables import cell_config

    config, profile = blob.get("config"), blob.get("profile")
    if not isinstance(config, dict) or profile not in PROFILES or cell is None:
        return None
    return _differences(config, cell_config(cell, profile, int(blob.get("seed", 0))))


def settings_beyond_profile(config: dict[str, Any], profile: str, method: str) -> tuple[str, ...] | None:
    """`field=value` for each setting of a run that is no table cell (e.g. `intraq run ... --set
    synth.num_images=256`) that differs from its profile's config for its method (IntraQ with the cells' base
    settings); None for a profile not registered here. The sections compared are those the method's case hash
    covers, as for a cell."""
    from intraq.config import apply_overrides
    from intraq.errors import UserInputError
    from intraq.profiles import PROFILES, get_profile
    from intraq.tables import INTRAQ_BASE

    if profile not in PROFILES:
        return None
    base = INTRAQ_BASE if method == "intraq" else (f"synth.method={method}",)
    try:
        return _differences(config, apply_overrides(get_profile(profile), list(base)))
    except (UserInputError, KeyError, ValueError):  # a method this code does not know
        return None


def _differences(config: dict[str, Any], expected: RunConfig) -> tuple[str, ...]:
    """`field=value` for each setting of a stored `config` that differs from `expected` over the sections its
    method's case hash covers (fields only one side has are not listed; locations and diagnostics neither)."""
    from intraq.pipeline import relevant_config

    reference = flatten(relevant_config(expected))
    return tuple(sorted(_setting(k, v) for k, v in flatten(config).items()
                        if k not in IGNORED and k in reference and reference[k] != v))


def describe_settings(per_run: Iterable[tuple[str, ...] | None]) -> str:
    """One sentence over the distinct runs of a report: the settings beyond their cells, with run counts."""
    per_run = list(per_run)
    counts = Counter(s for settings in per_run if settings for s in settings)
    unknown = sum(1 for settings in per_run if settings is None)
    if unknown == len(per_run):
        return "unknown: no run could be checked (profile or cell unknown here, or no stored config)"
    if counts:
        text = "; ".join(f"`{s}` ({n} of {len(per_run)} runs)" for s, n in sorted(counts.items()))
    else:
        text = "none: every checked run used its profile's settings for its cell"
    if unknown:
        text += f"; {unknown} runs could not be checked (profile or cell unknown here, or no stored config)"
    return text
