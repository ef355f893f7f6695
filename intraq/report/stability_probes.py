"""The stage-2 stability bound beside a diverged run: `bench/probe_finetune.py --sharpness` records on its inputs.

A run that diverges at its lr raises the question of how far that lr was from stable. `bench/probe_finetune.py
--sharpness N` measures the KD loss's sharpness at a calibrated student of the same teacher and images and the lr
bound of the case's SGD there (`intraq.finetune.stability`); its records live in
`<results>/diagnostics/finetune-probe/`. The report's header states, per diverged run, the sharpness measured on the
same teacher (by weights' identity) and images (by set folder), and the run's lr as a multiple of the bound. A run
that measured it itself (`finetune.sharpness_iters`: `stage2_sharpness` in its record) is stated from its record.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from intraq.finetune.stability import momentum_lr_bound
from intraq.report.official_runs import diagnostic_records, diverged_inputs, shown_path

PROBE_DIR = Path("diagnostics") / "finetune-probe"


def _measured_sharpness(blob: dict[str, Any]) -> bool:
    """A probe that measured sharpness, on a named image set and teacher."""
    sharpness, image_set = blob.get("sharpness"), blob.get("image_set")
    return (isinstance(sharpness, dict) and isinstance(sharpness.get("top_eigenvalue"), int | float)
            and isinstance(image_set, dict) and isinstance(image_set.get("cache_dir"), str)
            and isinstance(blob.get("teacher_id"), str))


def sharpness_beside_diverged(results: Path, profile: str, diverged: list[tuple[str, int, str]]) -> list[str]:
    """Per diverged run (label, seed, result file) with a sharpness probe on its inputs, one sentence."""
    records = diagnostic_records(results / PROBE_DIR, _measured_sharpness)
    out = []
    for label, seed, record, inputs in diverged_inputs(results, profile, diverged):
        finetune = record.config.get("finetune")
        if not finetune:
            continue
        own = record.extras.get("stage2_sharpness")
        ratio = own.get("lr_over_bound") if isinstance(own, dict) else None
        if isinstance(ratio, int | float) and math.isfinite(ratio) and ratio > 0:  # else no bound: probes, if any
            out.append(
                f"{label} seed {seed}: the run itself measured the KD loss's sharpness at {own['top_eigenvalue']:,.0f} "
                f"when calibration ended, so its lr {finetune['lr']:g} was {own['lr_over_bound']:.2f}x the largest "
                f"lr at which its SGD is stable on that curvature ({own['lr_bound']:.2g}; `stage2_sharpness` in its "
                "record)"
            )
            continue
        matching = [(path, blob) for path, blob in records
                    if (Path(blob["image_set"]["cache_dir"]).name, blob["teacher_id"]) == inputs]
        if not matching:
            continue
        values = sorted({round(blob["sharpness"]["top_eigenvalue"]) for _, blob in matching})
        measured = f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,} to {values[-1]:,}"
        # the run's own optimizer at the largest measured sharpness
        bound = momentum_lr_bound(values[-1], finetune["momentum"], finetune["nesterov"], finetune["weight_decay"])
        shown = ", ".join(f"`{shown_path(results, path)}`" for path, _ in matching)
        out.append(
            f"{label} seed {seed}: probes of stage 2 on the same teacher and images (each with its own calibration) "
            f"measured the KD loss's sharpness at {measured}, so the run's lr {finetune['lr']:g} is "
            f"{finetune['lr'] / bound:.2f}x the largest lr at which its SGD is stable on that curvature "
            f"({bound:.2g}; {shown}, `bench/probe_finetune.py --sharpness`)"
        )
    return out
