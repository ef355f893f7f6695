"""What a bench case leaves in results/ for the report besides the run record: a cell file per table cell and seed,
and, for the figure cells, a small .npz of images and teacher features, so the report renders from results/ alone.

Layout under `results/<profile>/`:

- `<case>-seed<N>.json`: the run record (`intraq.pipeline.run_case`), shared by every cell with that case hash.
- `cells/<table>--<cell>-seed<N>.json`: which cell this is, the paper's value, and the run's numbers.
- `figures-data/<case>-seed<N>.npz`: ≤ 64 images (uint8, display only, ≤ 64 px) for the grid, teacher
  features of ≤ 512 images for the UMAP figure, and the intra-class diversity measured on the whole set.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from intraq.artifacts import save_json
from intraq.config import RunConfig, to_dict
from intraq.methods import get_method
from intraq.results import cells_dir, figure_file
from intraq.tables import Cell

GRID_IMAGES = 64
FEATURE_IMAGES = 512
DISPLAY_PIXELS = 64
SUBSET_SEED = 1234  # which images the figures show; fixed so re-renders are identical


def cell_file(results: Path, profile: str, cell: Cell, seed: int) -> Path:
    return cells_dir(results, profile) / f"{cell.table}--{cell.key}-seed{seed}.json"


def run_path(record: dict[str, Any]) -> str:
    """Which implementation made a record: "reference", "fast" (every stage that has a fast path ran on it) or
    "mixed" (e.g. synthesis batches of both, or fast images with a reference stage 2)."""
    batches = (record.get("synthesis") or {}).get("batches_by_path") or {}
    stage2 = record.get("finetune_path")
    parts = ([] if not batches.get("fast") else ["fast"]) + ([] if not batches.get("reference") else ["reference"])
    if stage2 is not None:
        parts.append("fast" if isinstance(stage2, dict) else "reference")
    return "reference" if "fast" not in parts else "fast" if "reference" not in parts else "mixed"


def write_cell_record(cell: Cell, cfg: RunConfig, record: dict[str, Any], results: Path) -> dict[str, Any]:
    """Write (atomically) the cell file for `cell` at `cfg.seed`: the paper's value next to the measured one.

    The file depends only on the cell and the run record (not on whether this invocation reused a stored
    result), so re-running a finished bench leaves committed cell files unchanged."""
    out = {
        "table": cell.table,
        "cell": cell.key,
        "label": cell.label,
        "note": cell.note,
        "paper": {"value": cell.paper.value, "table": cell.paper.table, "row": cell.paper.row,
                  "setting": cell.paper.setting, "source": cell.paper.source},
        "paper_images": cell.paper_images,
        "num_images": cfg.synth.num_images if get_method(record["method"]).makes_images else None,
        "overrides": list(cell.overrides),
        "case": record["case"],
        "seed": record["seed"],
        "profile": record["profile"],
        "method": record["method"],
        "accuracy": record["accuracy"],
        "seconds": record["seconds"],
        "git_commit": record.get("git_commit"),
        "machine": record.get("machine"),
        "config": record.get("config", to_dict(cfg)),
        "result_file": f"{record['case']}-seed{record['seed']}.json",
        "rotation_degrees": cfg.synth.rotation_degrees if "R" in cfg.synth.lor.split("+") else None,
    }
    if record.get("git_commit_note"):
        out["git_commit_note"] = record["git_commit_note"]
    path = run_path(record)
    if path != "reference":  # only then: cell files of reference runs stay byte-identical
        out["path"] = path
    if record.get("data_identity"):
        out["data_identity"] = record["data_identity"]
    save_json(out, cell_file(results, cfg.profile, cell, cfg.seed))
    return out


def refresh_cell_files(cfg: RunConfig, record: dict[str, Any], results: Path) -> list[Path]:
    """Rewrite every cell file of `cfg`'s profile and seed that shows the case of `record` (a case is shared by the
    cells of several tables), after the case ran again (--force, --same-machine): none keeps the accuracy and
    machine of the run it replaced while pointing at the new record."""
    from intraq.tables import cell_index

    cells = cell_index()
    name, written = f"{record['case']}-seed{record['seed']}.json", []
    folder = cells_dir(results, cfg.profile)
    for path in sorted(folder.glob(f"*-seed{cfg.seed}.json")) if folder.exists() else []:
        try:
            blob = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # the report names unreadable cell files
        cell = cells.get((blob.get("table"), blob.get("cell")))
        if cell is not None and blob.get("result_file") == name and blob.get("seed") == cfg.seed:
            write_cell_record(cell, cfg, record, results)
            written.append(path)
    return written


def _display_uint8(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Denormalize, clip to [0, 1] and shrink to ≤ 64 px for display only (training never sees these, T7)."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = (images.float() * s + m).clamp(0, 1)
    if x.shape[-1] > DISPLAY_PIXELS:
        x = F.interpolate(x, size=(DISPLAY_PIXELS, DISPLAY_PIXELS), mode="bilinear", antialias=True)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def intra_class_diversity(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[int, float]]:
    """Mean pairwise cosine distance (1 - cos) between features of the same class, averaged over classes
    with ≥ 2 images (each class weighs the same); also the per-class values."""
    f = F.normalize(features.float(), dim=1)
    per_class: dict[int, float] = {}
    for c in labels.unique().tolist():
        fc = f[labels == c]
        n = len(fc)
        if n < 2:
            continue
        sim = fc @ fc.T
        mean_cos = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
        per_class[int(c)] = float(1.0 - mean_cos)
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return mean, per_class


def save_figure_data(
    cfg: RunConfig, cell: Cell, results: Path, artifacts: Path | None, device: torch.device, force: bool = False,
    record_run: tuple[str | None, str | None] = (None, None),
) -> Path:
    """Extract what the figures need for one image-set cell (reuses the stored image set; skips if present).
    `record_run` (the run record's start time and run id) is stamped in, so a report can tell figure data of an
    earlier run of the case (before a --force or --same-machine re-run) from this one's."""
    from intraq.data import build_data
    from intraq.pipeline import RunPaths, case_hash, get_image_set
    from intraq.teacher.features import extract_features
    from intraq.teacher.load import get_teacher

    case = case_hash(cfg)
    out = figure_file(results, cfg.profile, case, cfg.seed)
    if out.exists() and not force:
        return out
    tic = time.perf_counter()
    paths = RunPaths.default(artifacts, results)
    data = build_data(cfg.data)
    teacher = get_teacher(cfg.teacher, data, device, paths.artifacts, progress=False)
    image_set, _ = get_image_set(cfg, teacher, data, device, paths, progress=False)
    images, labels = image_set.images, image_set.labels
    if labels.dim() > 1:
        labels = labels.argmax(1)
    features = extract_features(teacher.model, images)
    diversity, per_class = intra_class_diversity(features, labels)
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    order = torch.randperm(len(images), generator=gen)
    grid_idx = order[:GRID_IMAGES]
    grid_idx = grid_idx[torch.argsort(labels[grid_idx], stable=True)]
    feat_idx = order[:FEATURE_IMAGES]
    meta = {
        "method": cfg.synth.method, "case": case, "seed": cfg.seed, "profile": cfg.profile, "cell": cell.name,
        "dataset": data.name, "num_classes": data.num_classes, "class_names": list(data.class_names),
        "num_images": len(images), "feature_dim": int(features.shape[1]),
        "feature_module": getattr(teacher.model, "feature_module_name", "?"),
        "diversity_metric": "mean pairwise cosine distance of teacher penultimate features within a class, "
        "averaged over classes with >= 2 images, on the whole image set",
        "seconds": time.perf_counter() - tic, "record_started": record_run[0],
        "record_run_id": record_run[1],
    }
    blob = io.BytesIO()
    np.savez_compressed(
        blob,
        grid_images=_display_uint8(images[grid_idx], data.norm.mean, data.norm.std),
        grid_labels=labels[grid_idx].numpy().astype(np.int32),
        features=features[feat_idx].numpy().astype(np.float16),
        feature_labels=labels[feat_idx].numpy().astype(np.int32),
        diversity=np.float64(diversity),
        diversity_classes=np.array(sorted(per_class), dtype=np.int32),
        diversity_values=np.array([per_class[c] for c in sorted(per_class)], dtype=np.float64),
        meta=np.array(json.dumps(meta)),
    )
    return _write_atomic(out, blob.getvalue())


def _write_atomic(path: Path, payload: bytes) -> Path:
    """Write to a temporary file and rename: an interrupted bench never leaves half an .npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
