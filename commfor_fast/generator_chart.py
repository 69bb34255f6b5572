"""The per-generator chart of an evaluation report: per_generator.png and .pdf.

One paper column wide (`charts`), and drawn to read as well for 3 fake generators as
for 5,000:

- up to `NAMED_UP_TO` generators, a dot plot: one named row per generator, worst AP at
  the top, one marker per charted metric on an axis from 0 to 1 (dots, not bars cut
  off at an axis start, so no length suggests a difference the data does not hold);
- beyond, the distribution over every generator on top (for each metric, the share of
  generators at or below each value: thousands of generators without overplotting),
  and below it the labelled extremes: the `WORST` generators by AP and the `BEST`, as
  named rows of the same dot plot, with a row counting the generators between.

Chance levels (what scores that ignore the image get), where the report declares them
(`Summary.chance`, from `Metric.chance`), are dashed vertical lines. The legend sits
below the axes, never over data. The metrics charted are those of `CHART_METRICS` that
`metrics.METRICS` declares with a mean over the fake generators, with the table's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from commfor_fast.charts import FONT_PT, TITLE_PT, chart_name, column_figure, save_chart, style_axes
from commfor_fast.metrics import EVAL, EvalReport, GeneratorMetrics, Metric, format_metric, metrics_of
from commfor_fast.report import by_ap

NAMED_UP_TO = 40  # generators shown as one named row each; beyond, distribution plus extremes
WORST, BEST = 10, 5  # the labelled extremes of a larger report
# charted when METRICS declares them with a mean over fake generators (in METRICS' order)
CHART_METRICS = ("ap", "ap_balanced", "auc", "balanced_accuracy", "accuracy")
ROW_INCHES = 0.17  # one named row: an 8 pt name with room around it
MARKERS = ("o", "s", "^", "D", "v")
CHANCE_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))  # one per distinct chance level


def chart_metrics() -> list[Metric]:
    """The metrics charted: those of `CHART_METRICS` with a mean over fake generators, in table order."""
    return [m for m in metrics_of(EVAL, "mean") if m.name in CHART_METRICS]


def report_figure(report: EvalReport) -> Figure:
    """The chart of `report`'s fake generators (see the module docstring)."""
    generators = by_ap([g for g in report.generators if g.n_fake])
    metrics = chart_metrics()
    if not generators:
        fig = column_figure(1.2)
        fig.text(0.5, 0.5, "no fake generators in the test set", ha="center", va="center", fontsize=FONT_PT)
        return fig
    if len(generators) <= NAMED_UP_TO:
        rows: list[GeneratorMetrics | None] = list(generators)
        fig = column_figure(1.7 + ROW_INCHES * len(rows))
        named = fig.add_subplot()
        top = named
    else:
        worst, best = generators[:WORST], generators[-BEST:]
        rows = [*worst, None, *best]
        fig = column_figure(3.2 + ROW_INCHES * len(rows))
        top, named = fig.subplots(2, 1, height_ratios=[1.9, ROW_INCHES * len(rows)])
        _distribution(top, generators, metrics)
    _named_rows(named, rows, metrics, hidden=len(generators) - len(rows) + 1)
    for ax in {top, named}:
        _chance_lines(ax, report, metrics)
    fig.suptitle(f"{len(generators)} fake generators, mean AP {format_metric(report.values.get('mean_ap'))}",
                 fontsize=TITLE_PT)
    handles, labels = named.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=FONT_PT, frameon=False)
    return fig


def plot_report(report: EvalReport, path: Path) -> tuple[Path, Path]:
    """`report_figure` as `path`.png and .pdf (its suffix is replaced); returns (png, pdf)."""
    return save_chart(report_figure(report), path)


def _named_rows(ax: Axes, rows: Sequence[GeneratorMetrics | None], metrics: Sequence[Metric], hidden: int) -> None:
    """One row per generator from the top (None: a row saying how many are `hidden`
    between), a marker per metric at its value on 0 to 1 (markers in metric colour `C<k>`
    as in `_distribution`), names as tick labels."""
    for k, m in enumerate(metrics):
        ys = [y for y, g in enumerate(rows) if g is not None and g.values.get(m.name) is not None]
        if not ys:  # undefined for every generator shown (n/a): no marker, no legend entry
            continue
        ax.plot([rows[y].values[m.name] for y in ys], ys, linestyle="none", marker=MARKERS[k % len(MARKERS)],  # type: ignore[union-attr]
                markersize=4, markerfacecolor="none", color=f"C{k}", label=m.label, clip_on=False)
    names = [f"({hidden:,} more)" if g is None else chart_name(g.name) for g in rows]
    ax.set_yticks(range(len(rows)), names)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # worst at the top, read first
    _unit_axis(ax)
    ax.set_xlabel("value per fake generator", fontsize=FONT_PT, loc="right")
    style_axes(ax)


def _distribution(ax: Axes, generators: Sequence[GeneratorMetrics], metrics: Sequence[Metric]) -> None:
    """For each metric, the share of generators at or below each value (a step curve)."""
    for k, m in enumerate(metrics):
        values = np.sort([v for g in generators if (v := g.values.get(m.name)) is not None])
        if values.size:
            ax.step(np.concatenate([[0.0], values]), np.arange(values.size + 1) / values.size, where="post",
                    color=f"C{k}", linewidth=1.2)
    _unit_axis(ax)
    ax.set_ylim(0, 1.02)
    ax.set_yticks([0, 0.5, 1], ["0", ".5", "1"])
    ax.set_ylabel("share of generators\nat or below", fontsize=FONT_PT)
    style_axes(ax)


def _unit_axis(ax: Axes) -> None:
    """The metric axis: 0 to 1 whatever the data, ticks every quarter."""
    ax.set_xlim(-0.02, 1.02)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0", ".25", ".5", ".75", "1"])


def _chance_lines(ax: Axes, report: EvalReport, metrics: Sequence[Metric]) -> None:
    """A dashed line at each chance level the report declares for a charted metric (mean over generators)."""
    chance = report.chance  # declared by the metrics of `Metric.chance`
    levels: dict[float, list[str]] = {}
    for m in metrics:
        if chance.get(m.mean_key) is not None:
            levels.setdefault(chance[m.mean_key], []).append(m.label)
    for (value, labels), style in zip(levels.items(), CHANCE_STYLES):
        ax.axvline(value, color="0.4", linestyle=style, linewidth=0.8, zorder=0,
                   label=f"chance {', '.join(labels)}: {value:.2g}")
