"""The report's figures as PNG bytes (matplotlib `Figure` objects, no pyplot state): data-amount curve, image
grids, the UMAP scatter of teacher features (the supplementary's Figure 1), intra-class diversity."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from intraq.report.load import FigureData

METHOD_COLORS = {"MDC (IntraQ)": "tab:blue", "ADI": "tab:orange", "Real data": "tab:green"}


@dataclass(frozen=True)
class MethodFigureData:
    """A method's figure material: the name shown, one seed's images/features, diversity over all its seeds."""

    name: str
    shown: FigureData
    diversities: tuple[float, ...]


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def data_amount_figure(summary: pd.DataFrame, profile: str) -> bytes:
    """Left: ours (best and final epoch, mean ± std over seeds) vs images used. Right: change vs the 5,120 row."""
    rows = summary[summary["table"] == "data_amount"].sort_values("paper_images")
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    used = [float(v) for v in rows["images_used"]]
    for metric, marker, label in (("best_epoch", "o", "ours, best epoch"), ("final_epoch", "s", "ours, final epoch")):
        left.errorbar(used, rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"].fillna(0.0), marker=marker,
                      capsize=3, label=f"{label} (mean ± sample sd over seeds)")
    left.set_xscale("log")
    shown = [x for x in used if not math.isnan(x)]
    left.set_xticks(shown, [f"{int(x):,}" for x in shown], fontsize=8)
    left.minorticks_off()
    left.set_xlabel(f"synthetic images used at profile {profile} (log scale)")
    left.set_ylabel("W4A4 top-1 accuracy (%)")
    left.set_title(f"Ours ({profile})")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)

    ref = rows[rows["paper_images"] == 5120]
    paper_ref = float(ref["paper_value"].iloc[0]) if len(ref) else math.nan
    right.plot(rows["paper_images"], rows["paper_value"] - paper_ref, "k^-", label="paper (ResNet-18 ImageNet)")
    for metric, marker, label in (("best_epoch", "o", "ours, best epoch"), ("final_epoch", "s", "ours, final epoch")):
        ours_ref = float(ref[f"{metric}_mean"].iloc[0]) if len(ref) else math.nan
        right.errorbar(rows["paper_images"], rows[f"{metric}_mean"] - ours_ref, yerr=rows[f"{metric}_std"].fillna(0),
                       marker=marker, capsize=3, label=label)
    right.axhline(0.0, color="0.6", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("paper's number of images (log scale)")
    right.set_ylabel("top-1 minus the 5,120-image row (points)")
    right.set_title("Change relative to the 5,120-image row")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    return to_png(fig)


def _mosaic(images: np.ndarray, columns: int = 8) -> np.ndarray:
    n, h, w, c = images.shape
    rows = max(1, math.ceil(n / columns))
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = img
    return canvas


def image_grid_figure(methods: Sequence[MethodFigureData]) -> bytes:
    """One 8 x 8 grid per method (images sorted by class label, denormalized and clipped for display)."""
    fig = Figure(figsize=(4.2 * len(methods), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(methods)))
    for ax, m in zip(axes, methods, strict=True):
        mosaic = _mosaic(m.shown.grid_images)
        ax.imshow(mosaic.squeeze() if mosaic.shape[-1] == 1 else mosaic, cmap="gray", interpolation="nearest")
        labels = m.shown.grid_labels
        ax.set_title(f"{m.name}\n{len(labels)} of {m.shown.meta['num_images']} images, seed {m.shown.seed}",
                     fontsize=9)
        ax.set_xlabel(f"sorted by class: {labels.min()}..{labels.max()}" if len(labels) else "", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return to_png(fig)


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """UMAP (cosine metric, fixed seed) of all methods' features together; PCA when umap-learn is missing."""
    try:
        import umap
    except ImportError:  # pragma: no cover - umap-learn is a dependency; keep the report working without it
        centered = features - features.mean(0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        return centered @ vt[:2].T, "PCA (umap-learn not installed)"
    n_neighbors = max(2, min(15, len(features) - 1))
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, metric="cosine", random_state=seed, n_jobs=1)
    return reducer.fit_transform(features), "UMAP"


def feature_scatter_figure(methods: Sequence[MethodFigureData]) -> bytes:
    """Left: every method's teacher features in one shared embedding, by method. Then one panel per method,
    coloured by class, on the same axes (the supplementary's Figure 1)."""
    feats = np.concatenate([m.shown.features for m in methods])
    owner = np.concatenate([np.full(len(m.shown.features), i) for i, m in enumerate(methods)])
    xy, how = embed_2d(feats)
    fig = Figure(figsize=(4.2 * (len(methods) + 1), 4.4))
    axes = np.atleast_1d(fig.subplots(1, len(methods) + 1, sharex=True, sharey=True))
    for i, m in enumerate(methods):
        sel = owner == i
        axes[0].scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.6, label=f"{m.name} ({sel.sum()})",
                        color=METHOD_COLORS.get(m.name))
    axes[0].set_title(f"{how} of teacher features, by method", fontsize=9)
    axes[0].legend(fontsize=8, markerscale=2)
    for ax, (i, m) in zip(axes[1:], enumerate(methods), strict=True):
        sel = owner == i
        labels = m.shown.feature_labels
        title = f"{m.name}: by class (intra-class diversity {np.mean(m.diversities):.3f})"
        ax.set_title(title, fontsize=9)
        if labels.max() < 10:
            cmap = matplotlib.colormaps["tab10"]
            for c in np.unique(labels):
                pick = labels == c
                ax.scatter(xy[sel][pick, 0], xy[sel][pick, 1], s=6, color=cmap(int(c)), label=f"class {c}")
            ax.legend(fontsize=6, ncol=2, markerscale=2, title="class label", title_fontsize=7)
        else:
            sc = ax.scatter(xy[sel, 0], xy[sel, 1], s=6, c=labels, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="class index")
    for ax in axes:
        ax.set_xlabel(f"{how} 1")
        ax.set_ylabel(f"{how} 2")
    return to_png(fig)


def diversity_figure(methods: Sequence[MethodFigureData]) -> bytes:
    """Bar chart of intra-class diversity per method: mean ± std over seeds, each seed's value as a dot."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    for i, m in enumerate(methods):
        vals = np.array(m.diversities)
        ax.bar(i, vals.mean(), yerr=vals.std(ddof=1) if len(vals) > 1 else 0, capsize=4,
               color=METHOD_COLORS.get(m.name), label=f"{m.name} (n={len(vals)})")
        ax.scatter(np.full(len(vals), i), vals, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(methods)), [m.name for m in methods])
    ax.set_ylabel("mean within-class cosine distance")
    ax.set_xlabel("image source")
    ax.set_title("Intra-class diversity of teacher features", fontsize=10)
    ax.legend(fontsize=8)
    return to_png(fig)


def learning_curve_figure(curves: dict[str, list], outside: list | None = None) -> bytes:
    """One panel per profile: test top-1 per evaluated epoch, a line per seed, its best epoch starred, the
    calibration epochs shaded (`curves` from `intraq.report.curves.curves_beside`); with `outside`, one more panel
    for runs that are no table cell, a line per run labelled with its settings."""
    panels = [(f"{profile} (machine: {', '.join(sorted({r.machine for r in runs}))})", runs,
               lambda run: f"seed {run.seed}") for profile, runs in curves.items()]
    if outside:
        panels.append(("runs outside the grid (own settings; machines in the text)", outside,
                       lambda run: textwrap.fill(run.label, 48)))
    fig = Figure(figsize=(5.2 * len(panels), 4.0 + (0.45 * len(outside) if outside else 0)), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, runs, label) in zip(axes, panels, strict=True):
        for run in runs:
            (line,) = ax.plot(run.epochs, run.accuracy, marker=".", lw=1.2, label=label(run))
            if run.best is not None:
                ax.plot([run.best_epoch], [run.best], marker="*", ms=13, color=line.get_color(), ls="none")
        calibration = max(r.calibration_epochs for r in runs)
        if calibration:
            ax.axvspan(-0.5, calibration - 0.5, color="0.9", label="calibration epochs")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch (★ best epoch)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        if outside and runs is outside:  # long labels: under the panel
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
        else:
            ax.legend(fontsize=8)
    return to_png(fig)
