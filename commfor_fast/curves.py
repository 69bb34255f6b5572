"""ROC and precision-recall curves of an evaluation: roc_pr.png and .pdf.

The report's per-generator figures say how well each generator is separated from the
reals, not at which operating point; these curves show it over every threshold: on
top the ROC curve (the false and true positive rates), below the precision-recall
curve, for all images together and for the `WORST` generators by AP (each its fakes
against all reals, the report's protocol), with the chance level of each (the
diagonal; the share of fakes) and the report's threshold marked on the ROC curve.
The AUC and AP in the legend are the report's values. One paper column wide
(`charts`); a curve of millions of images is thinned to the points that move it by
1/`RESOLUTION` of an axis, which no print resolves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from commfor_fast.charts import FONT_PT, TITLE_PT, chart_name, column_figure, save_chart, style_axes
from commfor_fast.metrics import EvalReport, format_metric
from commfor_fast.report import by_ap

CURVES_NAME = "roc_pr"  # .png and .pdf
WORST = 3  # generators with their own curves, the worst by AP
RESOLUTION = 2000  # a curve keeps the points that move it by 1/RESOLUTION of an axis
WORST_COLOURS = ("tab:red", "tab:orange", "tab:purple")


def _counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at every distinct score taken as threshold, highest first
    (an image is positive at or above it)."""
    order = np.argsort(-scores, kind="stable")
    ranked, positive = scores[order], labels[order] == 1
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    true_pos = np.cumsum(positive)[last_of_tie]
    return true_pos, last_of_tie + 1 - true_pos


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) from (0, 0) to (1, 1), one point per distinct score; both labels needed."""
    true_pos, false_pos = _counts(labels, scores)
    return np.r_[0.0, false_pos / false_pos[-1]], np.r_[0.0, true_pos / true_pos[-1]]


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) from recall 0, recall ascending, one point per distinct score:
    AP is the sum of each recall step times the precision at its end (drawn as steps)."""
    true_pos, false_pos = _counts(labels, scores)
    precision = true_pos / (true_pos + false_pos)
    return np.r_[0.0, true_pos / true_pos[-1]], np.r_[precision[0], precision]


def thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points of a curve where it moves to another cell of a RESOLUTION x RESOLUTION
    grid, with the first and last: the same drawing from a few thousand points."""
    cells = np.round(x * RESOLUTION) * (RESOLUTION + 1) + np.round(y * RESOLUTION)
    keep = np.r_[True, cells[1:] != cells[:-1]]
    keep[-1] = True
    return x[keep], y[keep]


def _draw(roc: Axes, pr: Axes, labels: np.ndarray, scores: np.ndarray, name: str, colour: str, width: float) -> None:
    """One group's ROC and PR curves (`name` is the legend's)."""
    roc.plot(*thin(*roc_points(labels, scores)), color=colour, linewidth=width, label=name)  # ties: a diagonal
    pr.plot(*thin(*pr_points(labels, scores)), color=colour, linewidth=width, drawstyle="steps-pre")


def curves_figure(report: EvalReport, labels: np.ndarray, scores: np.ndarray, generator_ids: np.ndarray,
                  generator_names: list[str]) -> Figure:
    """The ROC and PR curves of the scored images (see the module docstring).

    Args:
        report: the report of these scores (its AUC, AP and threshold are shown).
        labels: 0 (real) / 1 (fake) per image.
        scores: P(fake) per image.
        generator_ids: index into `generator_names` per image.
        generator_names: the generators' names, as the report's.
    """
    labels, scores = np.asarray(labels).astype(np.int64), np.asarray(scores, dtype=np.float64)
    generator_ids = np.asarray(generator_ids)
    fig = column_figure(6.2)
    roc, pr = fig.subplots(2, 1)
    reals = labels == 0
    if not reals.any() or reals.all():
        for ax in (roc, pr):
            ax.text(0.5, 0.5, "needs real and fake images", ha="center", va="center", transform=ax.transAxes,
                    fontsize=FONT_PT)
    else:
        worst = [g for g in by_ap([g for g in report.generators if g.n_fake]) if g.ap is not None][:WORST]
        for g, colour in zip(worst, WORST_COLOURS):
            mine = reals | (labels == 1) & (generator_ids == generator_names.index(g.name))
            _draw(roc, pr, labels[mine], scores[mine], f"{chart_name(g.name)}: AUC "
                  f"{format_metric(g.values.get('auc'))}, AP {format_metric(g.ap)}", colour, 1.0)
        _draw(roc, pr, labels, scores, f"all images: AUC {format_metric(report.values.get('auc'))}, AP "
              f"{format_metric(report.values.get('ap'))}", "black", 1.8)
        t = report.threshold
        roc.plot(np.mean(scores[reals] > t), np.mean(scores[~reals] > t), "o", color="black", markersize=5,
                 markerfacecolor="none", label=f"threshold {t:g} (all images)")
        roc.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=0.8, label="chance")
        share = float(np.mean(~reals))
        pr.axhline(share, color="0.4", linestyle=":", linewidth=0.8, label=f"chance (PR): share of fakes {share:.2g}")
    for ax, (x, y) in ((roc, ("false positive rate (reals)", "true positive rate")),
                       (pr, ("recall (fakes found)", "precision"))):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xticks([0, 0.5, 1], ["0", ".5", "1"])
        ax.set_yticks([0, 0.5, 1], ["0", ".5", "1"])
        ax.set_xlabel(x, fontsize=FONT_PT)
        ax.set_ylabel(y, fontsize=FONT_PT)
        style_axes(ax)
    fig.suptitle("ROC (top) and precision-recall", fontsize=TITLE_PT)
    handles, names = (a + b for a, b in zip(roc.get_legend_handles_labels(), pr.get_legend_handles_labels()))
    fig.legend(handles, names, loc="outside lower center", ncols=1, fontsize=FONT_PT, frameon=False,
               title=f"worst {WORST} by AP: fakes vs all reals", title_fontsize=FONT_PT)
    return fig


def write_curves(report: EvalReport, labels: np.ndarray, scores: np.ndarray, generator_ids: np.ndarray,
                 generator_names: list[str], out_dir: Path) -> dict[str, Path]:
    """`curves_figure` as roc_pr.png and .pdf in `out_dir`; returns the paths by kind ("curves", "curves_pdf")."""
    png, pdf = save_chart(curves_figure(report, labels, scores, generator_ids, generator_names), out_dir / CURVES_NAME)
    return {"curves": png, "curves_pdf": pdf}
