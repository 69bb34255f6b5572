"""Training curves: loss, lr and validation figures against the iteration, from `metrics.jsonl`.

Training draws them at its end as `OUT/training_curves.png` and `.pdf`;
`plot_training_curves(OUT)` draws them again from any run folder (a run still going,
one that was stopped, an older one), as they are read from its log alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from commfor_fast.checkpoint import is_new_best
from commfor_fast.errors import UserError
from commfor_fast.charts import save_chart
from commfor_fast.runlog import read_records

CURVES_NAME = "training_curves"  # OUT/training_curves.png and .pdf


def plot_training_curves(run: Path | str) -> tuple[Path, Path]:
    """Draw `run/metrics.jsonl` as `run/training_curves.png` and `.pdf` (each written
    atomically); returns both paths."""
    log = Path(run) / "metrics.jsonl"
    if not log.is_file():
        raise UserError(f"{run}: no metrics.jsonl here; give the --out folder of a training run")
    return save_chart(draw_training_curves(read_records(log)), Path(run) / CURVES_NAME)


def draw_training_curves(records: list[dict[str, Any]]) -> Figure:
    """Three panels over the same iteration axis: the training loss (the mean over every
    rank's batch) with the validation loss as dots; the lr; the validation AP and
    accuracy (0 to 1). Iterations are the log's, so a resumed run draws as one run."""
    steps = [r for r in records if "loss" in r]
    checks = [r for r in records if "val_loss" in r]
    fig = Figure(figsize=(6.5, 6.5), layout="constrained")
    loss_ax, lr_ax, val_ax = fig.subplots(3, 1, sharex=True)
    loss_ax.plot(_values(steps, "itr"), _values(steps, "loss"), lw=1, label="training loss (mean over ranks)")
    loss_ax.plot(_values(checks, "itr"), _values(checks, "val_loss"), "o-", ms=4, label="validation loss")
    loss_ax.set_ylabel("BCE loss")
    lr_ax.plot(_values(steps, "itr"), _values(steps, "lr"), lw=1, color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    val_ax.plot(_values(checks, "itr"), _values(checks, "val_ap"), "o-", ms=4, label="validation AP")
    val_ax.plot(_values(checks, "itr"), _values(checks, "val_acc"), "s--", ms=4, label="validation accuracy (at 0.5)")
    best = _best(checks)
    if best is not None:
        val_ax.plot([best["itr"]], [best["val_ap"]], "*", ms=12, color="tab:red", label="best AP (kept in best/)")
    val_ax.set_ylim(0, 1.02)
    val_ax.set_ylabel("AP / accuracy")
    val_ax.set_xlabel("iteration")
    if not checks:
        val_ax.text(0.5, 0.5, "no validation ran", transform=val_ax.transAxes, ha="center", va="center")
    for ax in (loss_ax, val_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right" if ax is val_ax else "upper right")
    for ax in (loss_ax, lr_ax, val_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(f"training curves: {len(steps)} logged iterations, {len(checks)} validation(s)", fontsize=10)
    return fig


def _best(checks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The validation whose model training kept in `best/` (the same rule: the latest
    that beat every one before it), None when no AP was computed."""
    best = None
    for i, record in enumerate(checks):
        if is_new_best(record.get("val_ap"), checks[:i]):
            best = record
    return best


def _values(records: list[dict[str, Any]], key: str) -> list[float]:
    """`key` of every record; NaN where the log has none (an AP with one class only)."""
    return [math.nan if r.get(key) is None else float(r[key]) for r in records]
