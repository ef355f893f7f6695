"""The stage-1 values an IntraQ or ADI run actually uses, after the `variant` choice (trap T1), as one frozen
dataclass. Its `to_dict()` is what the synthetic set's meta records and what its cache key hashes: the same
keys and values as ever, so no batch file changes name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from intraq.config import RunConfig, SynthConfig
from intraq.config_checks import check_choices
from intraq.errors import UserInputError
from intraq.synthesis.lor import LOR_VARIANTS

METHODS = ("intraq", "adi")  # the methods these settings drive

# (target_pro, margin_low, margin_up) of the official run scripts (methods §2.1.7, trap T1).
OFFICIAL_SCRIPT_SETTINGS: dict[str, tuple[float, float, float]] = {
    "imagenet": (1.0, 0.0, 2.0),  # run_generate.sh: SIL and MDC inert ("OnlyLOR")
    "cifar10": (0.95, 0.05, 0.8),
    "cifar100": (0.6, 0.02, 1.0),
    "digits": (0.95, 0.05, 0.8),  # our embedded toy set: the CIFAR-10 values
}
ADI_FIELDS = ("adi_scale", "adi_temperature", "adi_student")  # present (not None) for ADI only


@dataclass(frozen=True)
class SynthSettings:
    """Effective IntraQ / ADI stage-1 settings of one run (field order = the recorded dict's key order)."""

    method: str
    variant: str
    dataset: str
    target_loss: str
    target_pro: float
    sil_inert: bool  # t == 1 for all images: (1 - p_y)^2
    mdc: bool
    margin_low: float
    margin_up: float
    mdc_inert: bool  # d in [0, 2]: hinges always 0
    lor: str
    lor_ops: tuple[str, ...]
    lor_prob: float
    aug_margin: float
    rotation_degrees: float  # 0 unless LOR rotates
    iterations: int
    batch_size: int
    lr: float
    plateau_patience: int
    min_lr: float
    adi_scale: float | None = None
    adi_temperature: float | None = None
    adi_student: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lor_ops a list); ADI's fields only for ADI, as the set's meta and cache key always had."""
        out = dataclasses.asdict(self)
        out["lor_ops"] = list(self.lor_ops)
        if self.method != "adi":
            for name in ADI_FIELDS:
                del out[name]
        return out


def effective_synth_settings(
    cfg: RunConfig | SynthConfig, dataset_name: str, method: str | None = None
) -> SynthSettings:
    """The stage-1 values a run actually uses after the `variant` choice (trap T1); kept in the set's meta."""
    s = cfg.synth if isinstance(cfg, RunConfig) else cfg
    method = method or s.method
    if method not in METHODS:
        raise UserInputError(f"synth.method={method!r} is not generated here; expected one of {METHODS}")
    check_choices(s, "synth.")  # checked when the config was built; again for sections built by hand
    if s.variant == "paper":
        target_pro, margin_low, margin_up = s.target_pro, s.margin_low, s.margin_up
    else:
        if dataset_name not in OFFICIAL_SCRIPT_SETTINGS:
            known = ", ".join(OFFICIAL_SCRIPT_SETTINGS)
            raise UserInputError(
                f"synth.variant=official-script has no run-script settings for data set {dataset_name!r} "
                f"(known: {known}); use synth.variant=paper"
            )
        target_pro, margin_low, margin_up = OFFICIAL_SCRIPT_SETTINGS[dataset_name]
    mdc = bool(s.mdc) and method == "intraq"
    ops = tuple(LOR_VARIANTS[s.lor])
    adi = method == "adi"
    return SynthSettings(
        method=method,
        variant=s.variant,
        dataset=dataset_name,
        target_loss=s.target_loss,
        target_pro=float(target_pro),
        sil_inert=s.target_loss == "sil" and target_pro >= 1.0,
        mdc=mdc,
        margin_low=float(margin_low),
        margin_up=float(margin_up),
        mdc_inert=(not mdc) or (margin_low <= 0.0 and margin_up >= 2.0),
        lor=s.lor,
        lor_ops=ops,
        lor_prob=float(s.lor_prob),
        aug_margin=float(s.aug_margin),
        rotation_degrees=float(s.rotation_degrees) if "rotate" in ops else 0.0,
        iterations=int(s.iterations),
        batch_size=int(s.batch_size),
        lr=float(s.lr),
        plateau_patience=int(s.plateau_patience),
        min_lr=float(s.min_lr),
        adi_scale=float(s.adi_scale) if adi else None,
        adi_temperature=float(s.adi_temperature) if adi else None,
        adi_student=s.adi_student if adi else None,
    )
