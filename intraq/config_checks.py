"""Every config value checked once, when the config is built (profile + overrides, or `from_dict`).

A bad value is a one-line `UserInputError` naming the field, what it got and what it needs, raised before any
data, teacher or image is touched. Kept apart from `config.py` so the rules read as one table; nothing here
imports torch, so `intraq run --profile nosuch` and `--method nosuch` fail in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from intraq.errors import UserInputError

Check = Callable[[Any], bool]

BITS = ("quant.weight_bits", "quant.act_bits", "squant.last_layer_input_bits")
SEEDS = ("seed", "teacher.train_seed")
AT_LEAST_ONE = (
    "teacher.train_epochs", "teacher.train_batch_size",
    "synth.num_images", "synth.batch_size", "synth.iterations",
    "finetune.epochs", "finetune.iters_per_epoch", "finetune.batch_size", "finetune.calib_epochs",
    "finetune.calib_batch_size", "finetune.gdfq_latent_dim", "finetune.eval_every", "finetune.eval_batch_size",
    "qimera.epochs", "qimera.iters_per_epoch", "qimera.batch_size", "qimera.latent_dim", "qimera.mix_classes",
    "squant.noise_batch",
)
AT_LEAST_ZERO = ("synth.plateau_patience", "qimera.warmup_epochs", "qimera.calib_epochs", "finetune.sharpness_iters")
PROBABILITIES = (
    "synth.target_pro", "synth.lor_prob", "qimera.mix_prob", "quant.ema_beta", "teacher.train_momentum",
    "finetune.momentum", "qimera.momentum",
)
POSITIVE = (
    "teacher.train_lr", "synth.lr", "synth.adi_temperature", "finetune.lr", "finetune.lr_decay", "finetune.temperature",
    "finetune.gdfq_lr", "qimera.lr", "qimera.generator_lr", "qimera.lr_decay", "qimera.temperature",
    "squant.act_sigma",
)
NON_NEGATIVE = (
    "teacher.train_weight_decay", "synth.min_lr", "synth.margin_low", "synth.margin_up", "synth.adi_scale",
    "synth.rotation_degrees", "finetune.weight_decay", "finetune.alpha", "qimera.alpha", "qimera.weight_decay",
)

RULES: tuple[tuple[tuple[str, ...], Check, str], ...] = (
    (BITS, lambda v: v >= 1, "bits must be >= 1"),
    (SEEDS, lambda v: v >= 0, "seeds must be >= 0"),
    (AT_LEAST_ONE, lambda v: v >= 1, "must be >= 1"),
    (AT_LEAST_ZERO, lambda v: v >= 0, "must be >= 0"),
    (PROBABILITIES, lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    (POSITIVE, lambda v: v > 0, "must be > 0"),
    (NON_NEGATIVE, lambda v: v >= 0, "must be >= 0"),
    (("synth.aug_margin",), lambda v: 0.0 < v <= 1.0, "the crop's smallest area fraction must be in (0, 1]"),
    (("finetune.lr_steps", "qimera.lr_steps"), lambda v: all(s >= 0 for s in v), "epochs must be >= 0"),
    (("finetune.crop_scale",), lambda v: len(v) == 2 and 0.0 < v[0] <= v[1] <= 1.0,
     "must be two area fractions lo,hi with 0 < lo <= hi <= 1"),
    # A user's image-folder data set (None: read from the files).
    (("data.num_classes",), lambda v: v is None or v >= 2, "must be >= 2 (or unset: the class folders decide)"),
    (("data.channels",), lambda v: v in (None, 1, 3), "must be 1 or 3 (or unset: the images decide)"),
    (("data.resize",), lambda v: v is None or v >= 1, "must be >= 1 pixel (or unset: no resize)"),
    (("data.std",), lambda v: v is None or all(x > 0 for x in v), "every std must be > 0"),
)


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit the field's type hint (None when it does); Literal hints list their choices."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return None if value in args else f"expected one of {', '.join(map(str, args))}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin is tuple:
        if not isinstance(value, tuple):
            return "expected a tuple"
        item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            return f"expected {len(item_hints)} values"
        return next((p for p in map(_type_problem, value, item_hints) if p is not None), None)
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "expected a number"
        return None if math.isfinite(value) else "expected a finite number"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    return None


def type_problems(section: Any, prefix: str = "") -> list[str]:
    """Every field of a (nested) config dataclass whose value does not fit its type, as `name=value: why`."""
    problems = []
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, name = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            problems += type_problems(value, f"{name}.")
        elif (why := _type_problem(value, hints[f.name])) is not None:
            problems.append(f"{name}={value!r}: {why}")
    return problems


def value_problems(cfg: Any) -> list[str]:
    """Range and consistency problems of a config whose values have the right types."""
    problems = []
    for names, ok, why in RULES:
        for name in names:
            value = _get(cfg, name)
            if not ok(value):
                problems.append(f"{name}={value!r}: {why}")
    ft = cfg.finetune
    if ft.calib_epochs >= ft.epochs:
        problems.append(
            f"finetune.calib_epochs={ft.calib_epochs}: must be < finetune.epochs={ft.epochs} (the epochs count "
            "the calibration epochs)"
        )
    s = cfg.synth
    if s.margin_low > s.margin_up:
        problems.append(f"synth.margin_low={s.margin_low!r}: must be <= synth.margin_up={s.margin_up!r}")
    from intraq.methods import METHODS  # torch-free: the entries import their heavy parts when they run

    if cfg.synth.method not in METHODS:
        problems.append(f"synth.method={cfg.synth.method!r}: unknown method; known: {', '.join(METHODS.names())}")
    return problems


def check_config(cfg: Any) -> None:
    """Raise one one-line `UserInputError` listing every bad value of `cfg` (a `RunConfig`); else return."""
    problems = type_problems(cfg)
    if not problems:
        problems = value_problems(cfg)
    if problems:
        raise UserInputError("bad config: " + "; ".join(problems))


def check_choices(section: Any, prefix: str) -> None:
    """The `Literal[...]` fields of one config section, for code handed a section built by hand."""
    problems = [p for p in type_problems(section, prefix) if "expected one of" in p]
    if problems:
        raise UserInputError("bad config: " + "; ".join(problems))
