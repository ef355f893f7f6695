"""Dataclass configs for one benchmark case, command-line overrides, and the config hash that names artifacts.

Every field that can change a number is part of the hash; fields that only say *where* things live
(paths, device) are not, so the same case on another machine or data copy shares its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from intraq.config_checks import check_config
from intraq.errors import UserInputError


@dataclass
class DataConfig:
    """Which data set, and where the user keeps it (not needed for the embedded `digits`)."""

    name: str = "digits"  # the data set's name (results and reports are named by it)
    root: str | None = None  # cifar10: torchvision folder, ImageFolder tree or the .tar.gz; imagenet: ImageFolder tree
    # decoded uint8 tensors; default $INTRAQ_ARTIFACTS/cache, else ./artifacts/cache (not a run's --artifacts: one
    # decoded copy per machine serves every artifacts folder)
    cache_dir: str | None = None
    # The reader: digits | cifar10 | imagenet | image-folder (any ImageFolder tree); default: `name` itself.
    loader: str | None = None
    # image-folder only (None: read from the files): class count, 1 or 3 channels, a square side to resize to,
    # and the normalization (default: mean and std of the train split, computed once and cached).
    num_classes: int | None = None
    channels: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass
class TeacherConfig:
    """The full-precision teacher and, for locally trained ones, the recipe that makes it."""

    name: str = "digits_cnn"
    # local: own recipe / checkpoint file | torchvision | pytorchcv
    source: Literal["local", "torchvision", "pytorchcv"] = "local"
    checkpoint: str | None = None  # a local file; for `local` the default is the hash-named artifact
    auto_train: bool = False  # train the local teacher when its checkpoint is missing (smoke: seconds)
    train_seed: int = 0  # one teacher for every case and seed of a profile
    train_epochs: int = 30
    train_batch_size: int = 128
    train_lr: float = 0.1
    train_momentum: float = 0.9
    train_weight_decay: float = 5e-4
    train_augment: bool = True  # random crop (pad 4) + horizontal flip, as for CIFAR
    # A teacher whose sidecar names another data set is refused unless this is set (the record then says so).
    allow_other_data: bool = False


@dataclass
class QuantConfig:
    """GDFQ-lineage quantizer (methods §1): per-channel min/max weights, EMA activation ranges after ReLUs."""

    weight_bits: int = 4
    act_bits: int = 4
    # correct: EMA with proper bias correction | official: the lineage's broken one (T11)
    act_ema: Literal["correct", "official"] = "correct"
    ema_beta: float = 0.9


@dataclass
class SynthConfig:
    """How the calibration/fine-tuning images are made (IntraQ stage 1, its ablations, ADI, real data, ...)."""

    method: str = "intraq"  # a registered method (`intraq.methods.METHODS`; `intraq run --help` lists them)
    # paper: MDC+SIL on | official-script: the run script's settings (T1)
    variant: Literal["paper", "official-script"] = "paper"
    num_images: int = 5120
    batch_size: int = 256
    iterations: int = 1000
    lr: float = 0.5
    plateau_patience: int = 50
    min_lr: float = 1e-4
    target_loss: Literal["sil", "ce"] = "sil"  # sil: (p_y - t)^2 as coded (T2) | ce: plain cross-entropy
    target_pro: float = 0.95
    mdc: bool = True
    margin_low: float = 0.05
    margin_up: float = 0.8
    lor: Literal["none", "L", "L+F", "L+R", "L+R+F"] = "L+F"  # the official code's LOR is L+F (T3)
    lor_prob: float = 0.5
    aug_margin: float = 0.5
    rotation_degrees: float = 15.0  # not in any official code: a recorded choice
    adi_scale: float = 0.2
    adi_temperature: float = 3.0
    # quantized: W/A-bit student before fine-tuning | teacher-copy: fixed FP copy
    adi_student: Literal["quantized", "teacher-copy"] = "quantized"
    # DeepInversion's output per batch: best: the lowest-loss iterate | after-step: one Adam step past it (the
    # ImageNet script from NVlabs/DeepInversion@cb22f73) | last: the final iterate (the CIFAR script)
    di_snapshot: Literal["best", "after-step", "last"] = "best"


@dataclass
class FinetuneConfig:
    """IntraQ stage 2 (methods §2.2): activation-range calibration, then KD fine-tuning of the quantized student."""

    epochs: int = 151  # including the calibration epochs, as the official loop counts them
    iters_per_epoch: int = 200
    batch_size: int = 256
    lr: float = 1e-4
    lr_steps: tuple[int, ...] = (20, 40, 60)
    lr_decay: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    temperature: float = 20.0
    alpha: float = 20.0
    calib_epochs: int = 4
    # gdfq: a GDFQ generator trained on the fly (official, T10) | train: the images
    calib_source: Literal["gdfq", "train"] = "gdfq"
    calib_batch_size: int = 16
    gdfq_lr: float = 1e-3
    gdfq_latent_dim: int = 100
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    eval_every: int = 1
    eval_batch_size: int = 500
    # Diagnostic, not part of the case: > 0 measures the KD loss's sharpness at the calibrated student with that many
    # power iterations (one batch, its own draws) and the lr's distance from SGD's stability bound, into the record.
    sharpness_iters: int = 0


@dataclass
class QimeraConfig:
    """Qimera (methods §4): GDFQ generator with superposed embeddings, trained together with the student."""

    epochs: int = 400
    iters_per_epoch: int = 200
    batch_size: int = 200
    warmup_epochs: int = 4
    lr: float = 1e-4
    lr_steps: tuple[int, ...] = (100, 200, 300)
    generator_lr: float = 1e-3
    latent_dim: int = 64
    mix_prob: float = 0.4
    mix_classes: int = 2
    disentangle: bool = False  # the official scripts run without DM (inverted flag, T21)
    temperature: float = 20.0
    alpha: float = 1.0
    # random: N(0,1) (--randemb: C10, ImageNet) | teacher-fc: FC weights (C100)
    embedding: Literal["random", "teacher-fc"] = "random"
    calib_epochs: int = 4  # activation ranges update in epochs 0..3 (hard-coded `epoch < 4` officially)
    lr_decay: float = 0.1  # x0.1 at lr_steps, for both the student and the generator
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class SquantConfig:
    """SQuant (methods §5): data-free PTQ with E/K/C rounding, activation ranges from uniform noise."""

    mode: Literal["squant-e", "squant-k", "squant-c", "squant"] = "squant"  # squant = E+K+C
    act_sigma: float = 12.0  # -s in the official scripts (12 for 4-bit)
    last_layer_input_bits: int = 8
    noise_batch: int = 256
    # Where activations are quantized. squant: SQuant's own protocol (every Conv2d/Linear input but the first,
    # the FC input at last_layer_input_bits). lineage: the IntraQ/Qimera/GDFQ places (every ReLU output at
    # quant.act_bits; image, BN and pooled FC input not re-quantized), for a like-for-like comparison.
    protocol: Literal["squant", "lineage"] = "squant"


@dataclass
class RunConfig:
    """One benchmark case: everything that decides its numbers."""

    profile: str = "smoke"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    qimera: QimeraConfig = field(default_factory=QimeraConfig)
    squant: SquantConfig = field(default_factory=SquantConfig)


# Fields that say where things are, not what is computed: left out of every hash.
LOCATION_FIELDS = {"data.root", "data.cache_dir", "teacher.checkpoint", "teacher.auto_train"}
# Measurements that change no number of a run (tested): never part of any hash, so asking for them names no new case.
DIAGNOSTIC_FIELDS = {"finetune.sharpness_iters"}
# Fields added after results were published, left out of a hash while they hold these defaults, so every
# earlier case keeps its name; set to anything else, they name a different case.
LATER_FIELDS: dict[str, Any] = {
    "data.loader": None, "data.num_classes": None, "data.channels": None, "data.resize": None, "data.mean": None,
    "data.std": None, "squant.protocol": "squant", "teacher.allow_other_data": False, "synth.di_snapshot": "best",
}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(obj: Any, exclude: set[str] = LOCATION_FIELDS, length: int = 12) -> str:
    """Stable short sha256 of a config (dataclass or dict), ignoring location and diagnostic fields."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else json.loads(json.dumps(obj))
    for dotted in (*exclude, *LATER_FIELDS, *DIAGNOSTIC_FIELDS):
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        if dotted in exclude or dotted in DIAGNOSTIC_FIELDS or node[parts[-1]] == LATER_FIELDS[dotted]:
            node.pop(parts[-1])
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) dataclass from `to_dict` output; unknown keys are an error, and a `RunConfig` is
    checked whole (`intraq.config_checks`): a bad value is a one-line `UserInputError`."""
    built = _build(cls, data)
    if cls is RunConfig:
        check_config(built)
    return built


def _build(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserInputError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value)
        elif typing.get_origin(hint) is tuple and value is not None:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _parse_value(text: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if text in args:
            return text
        raise UserInputError(f"override {key}={text!r}: expected one of {', '.join(args)}")
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            return None
        non_none = [a for a in args if a is not type(None)]
        return _parse_value(text, non_none[0], key)
    if origin is tuple:
        item_type = args[0]
        items = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
        return tuple(_parse_value(t.strip(), item_type, key) for t in items)
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserInputError(f"override {key}={text!r}: expected true or false")
    try:
        return hint(text)
    except (TypeError, ValueError):
        raise UserInputError(f"override {key}={text!r}: expected a {getattr(hint, '__name__', hint)}") from None


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a copy of `cfg` with `section.field=value` overrides applied (e.g. `synth.num_images=256`), checked
    whole once all are applied: a bad value is a one-line `UserInputError` before any work."""
    cfg = _build(RunConfig, to_dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise UserInputError(f"override {item!r} must look like section.field=value, e.g. synth.num_images=256")
        key, text = item.split("=", 1)
        target: Any = cfg
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not dataclasses.is_dataclass(target) or not hasattr(target, part):
                raise UserInputError(f"override {key!r}: no config section {part!r}")
            target = getattr(target, part)
        name = parts[-1]
        if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
            known = ", ".join(f.name for f in dataclasses.fields(target)) if dataclasses.is_dataclass(target) else ""
            raise UserInputError(f"override {key!r}: unknown field {name!r}; fields here: {known}")
        hint = typing.get_type_hints(type(target))[name]
        if dataclasses.is_dataclass(hint):
            raise UserInputError(f"override {key!r} names a section; set one of its fields instead")
        setattr(target, name, _parse_value(text.strip(), hint, key))
    check_config(cfg)
    return cfg
