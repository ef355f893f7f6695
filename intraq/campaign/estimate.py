"""How long a case will take, from earlier records of the same profile, and `--deadline` text to seconds."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from intraq.errors import UserInputError

# Used when a profile has no record yet; stated in `intraq status` and in the skip reasons.
DEFAULT_CASE_SECONDS: dict[str, float] = {"smoke": 60.0, "cifar10-cpu": 1800.0, "cifar10": 4 * 3600.0,
                                          "cifar10-lr1e-5": 4 * 3600.0, "cifar10-lr1e-5-256-cut": 2 * 3600.0,
                                          "imagenet": 24 * 3600.0}
FALLBACK_CASE_SECONDS = 3600.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | None) -> float | None:
    """'12m', '1h30m', '90s', '2h' or plain seconds ('480') to seconds; None stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = text.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise UserInputError(f"--deadline {text!r} is not a duration; write e.g. 90s, 12m, 1h30m or 480")
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserInputError(f"--deadline {text!r} must be positive")
    return seconds


def device_kind(where: dict | None) -> str:
    """"cuda" or "cpu": the kind of device named by a record's `machine` or a sitting (`device`, e.g. "cuda:0")."""
    return str((where or {}).get("device") or "cpu").split(":", 1)[0]


def record_device_type(record: dict) -> str:
    """The kind of device a record ran on (its last sitting's, `machine.device`)."""
    return device_kind(record.get("machine"))


def mixed_devices(record: dict) -> bool:
    """Whether a resumed record's earlier sittings (`intraq.sitting_wall`) ran on another kind of device."""
    kind = record_device_type(record)
    return any(device_kind(entry) != kind for entry in record.get("earlier_sittings") or [])


def stacked_runs(record: dict) -> int:
    """How many cases shared the record's stage 2 (`intraq campaign --stack`): a case's share of its group's wall
    time (`seconds.stack_group_total`) is that time over this number."""
    path = record.get("finetune_path")
    fast = path.get("fast") if isinstance(path, dict) else None
    return max(1, int((fast or {}).get("stacked_runs") or 1))


@dataclass
class Durations:
    """Compute seconds of the finished records of one profile, by case and by method. With `device_type`, only
    the records that ran on that kind of device count: one profile's CPU and GPU runs differ a hundredfold, and
    a GPU campaign's deadline planned on a CPU record would start nothing."""

    by_case: dict[str, list[float]] = field(default_factory=dict)
    by_method: dict[str, list[float]] = field(default_factory=dict)
    default: float = FALLBACK_CASE_SECONDS

    @classmethod
    def from_records(cls, results: Path, profile: str, default: float | None = None,
                     device_type: str | None = None) -> Durations:
        out = cls(default=default if default is not None else DEFAULT_CASE_SECONDS.get(profile,
                                                                                        FALLBACK_CASE_SECONDS))
        folder = Path(results) / profile
        for path in sorted(folder.glob("*-seed*.json")) if folder.exists() else []:
            try:
                record = json.loads(path.read_text())
                spent = record["seconds"]
                seconds = float(spent.get("stack_group_total", spent["total"])) / stacked_runs(record)
                if device_type is not None and record_device_type(record) != device_type:
                    continue
                if mixed_devices(record):
                    continue  # resumed across a CPU and a GPU: its total is neither's
            except (ValueError, KeyError, TypeError, OSError, AttributeError):
                continue  # not a run record (or unreadable): no estimate from it
            out.by_case.setdefault(str(record.get("case")), []).append(seconds)
            out.by_method.setdefault(str(record.get("method")), []).append(seconds)
        return out

    def estimate(self, case: str, method: str) -> tuple[float, str]:
        """(seconds, where the number comes from): other seeds of the case, else the method's median in the
        profile, else the median of every record of the profile, else the stated default."""
        if self.by_case.get(case):
            return statistics.mean(self.by_case[case]), "other seeds of this case"
        if self.by_method.get(method):
            return statistics.median(self.by_method[method]), f"median of this profile's {method} records"
        every = [s for values in self.by_method.values() for s in values]
        if every:
            return statistics.median(every), "median of this profile's records"
        return self.default, "default (no record of this profile yet)"
