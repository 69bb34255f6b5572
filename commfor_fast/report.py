"""Writing and showing an evaluation report: report.json, per_generator.csv, a chart, a table.

The JSON holds everything (`EvalReport.to_dict`, plus optional run metadata); the CSV
has one row per generator for spreadsheets (an undefined value is an empty cell); its
columns and the console's derive from `metrics.METRICS`; the chart (PNG at 200 dpi and
PDF, for papers) shows per-generator AP and balanced accuracy, sorted, on an axis scaled to the
data with the values on the bars, readable for five generators or for hundreds;
`format_table` is what the console shows. Undefined values print as "n/a". Generator
names in the CSV are escaped against spreadsheet formula injection.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from commfor_fast.fileio import atomic_write
from commfor_fast.metrics import EVAL, PER_GENERATOR_NOTE, EvalReport, GeneratorMetrics, chance_line, format_metric, \
    metrics_of
from commfor_fast.safetext import printable, spreadsheet_safe

REPORT_JSON = "report.json"
GENERATOR_CSV = "per_generator.csv"
CHART_NAME = "per_generator"  # .png and .pdf
CHART_DPI = 200
# Up to this many generators the chart is a labelled bar chart, one row each (300 rows
# are about 18,000 px tall at 200 dpi); beyond, a sorted dot plot.
BAR_CHART_MAX = 300
ROW_INCHES = 0.3
WORST_LABELLED = 10
NAME_WIDTH = 44


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """Printable (`safetext.printable`), shortened in the middle: generator ids differ at both ends (org/..., ...-v2)."""
    name = printable(name)
    if len(name) <= width:
        return name
    head = (width - 3) // 2
    return name[:head] + "..." + name[len(name) - (width - 3 - head):]


def _by_ap(generators: list[GeneratorMetrics]) -> list[GeneratorMetrics]:
    """Worst AP first; generators without AP last, by fake accuracy."""
    return sorted(generators, key=lambda g: (g.ap is None, g.ap or 0.0, g.fake_accuracy or 0.0))


def csv_columns() -> tuple[str, ...]:
    """per_generator.csv's header: the generator, its counts, its metrics (`metrics.METRICS`)."""
    return ("generator", "n_real", "n_fake", *(m.name for m in metrics_of(EVAL, "per_generator")))


def write_rows(path: Path, header: Sequence[str], rows: Iterable[Iterable[object]]) -> Path:
    """A CSV of `rows` under `header`, written atomically; None is an empty cell."""
    with atomic_write(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow("" if v is None else v for v in row)
    return path


def write_report(report: EvalReport, out_dir: Path, meta: Mapping[str, Any] | None = None,
                 sections: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write report.json (with `meta`, e.g. the run's settings, and any further `sections`,
    e.g. "robustness"), per_generator.csv and the chart, each atomically
    (`fileio.atomic_write`): a failed write leaves no empty or partial file.

    Returns the paths by kind: "json", "csv", "chart" (the PNG) and "chart_pdf".
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / REPORT_JSON, "csv": out_dir / GENERATOR_CSV}
    data = report.to_dict()
    if meta is not None:
        data["meta"] = dict(meta)
    data.update(sections or {})
    with atomic_write(paths["json"], "w") as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
    write_rows(paths["csv"], csv_columns(),
               ((spreadsheet_safe(g.name), g.n_real, g.n_fake, *g.values.values()) for g in report.generators))
    paths["chart"], paths["chart_pdf"] = plot_report(report, out_dir / CHART_NAME)
    return paths


def format_table(report: EvalReport) -> str:
    """The report as console text: overall lines, fake generators by AP, real sources."""
    r = report
    columns = metrics_of(EVAL, "per_generator")
    lines = [
        f"overall: {r.n} images ({r.n_real} real, {r.n_fake} fake)  "
        + "  ".join(f"{m.label} {m.fmt(r.values[m.name])}" for m in metrics_of(EVAL, "overall")),
        f"mean over {r.n_fake_generators} fake generators: "
        + "  ".join(f"{m.label} {m.fmt(r.values[m.mean_key])}" for m in metrics_of(EVAL, "mean")),
        PER_GENERATOR_NOTE,
    ]
    fakes = _by_ap([g for g in r.generators if g.n_fake])
    if fakes:
        header = ("generator (worst AP first)", "n_real", "n_fake", *(m.label for m in columns))
        width = max(min(max(len(g.name) for g in fakes), NAME_WIDTH), len(header[0]))  # the header whole
        lines += ["", f"{header[0]:<{width}}  " + "  ".join(f"{h:>9}" for h in header[1:])]
        for g in fakes:
            cells = (g.n_real, g.n_fake, *(m.fmt(g.values[m.name]) for m in columns))
            lines.append(f"{short_name(g.name, width):<{width}}  " + "  ".join(f"{c:>9}" for c in cells))
    if r.real_sources:
        width = min(max(len(s.name) for s in r.real_sources), NAME_WIDTH)
        lines += ["", f"{'real source':<{width}}  {'n':>9}  {'acc':>9}"]
        for s in sorted(r.real_sources, key=lambda s: s.accuracy):
            lines.append(f"{short_name(s.name, width):<{width}}  {s.n:>9}  {format_metric(s.accuracy):>9}")
    return "\n".join([*lines, "", chance_line(r, EVAL)])


def plot_report(report: EvalReport, path: Path) -> tuple[Path, Path]:
    """Per-generator AP and balanced accuracy of the fake generators, sorted by AP, as PNG (200 dpi) and PDF.

    `path` names the files (its suffix is replaced). Up to `BAR_CHART_MAX` generators:
    one labelled pair of bars each, with their values, on an axis scaled to the data.
    Beyond that, a sorted dot plot with the worst few numbered and listed by name.
    Returns (png, pdf).
    """
    generators = _by_ap([g for g in report.generators if g.n_fake])
    if not generators:
        fig = Figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "no fake generators in the test set", ha="center", va="center")
    elif len(generators) <= BAR_CHART_MAX:
        fig = _bar_chart(report, generators)
    else:
        fig = _dot_chart(report, generators)
    return save_chart(fig, path)


def save_chart(fig: Figure, path: Path) -> tuple[Path, Path]:
    """`fig` as `path` with .png (CHART_DPI) and .pdf suffixes, each written atomically."""
    png, pdf = path.with_suffix(".png"), path.with_suffix(".pdf")
    with atomic_write(png) as f:
        fig.savefig(f, format="png", dpi=CHART_DPI)
    with atomic_write(pdf) as f:
        fig.savefig(f, format="pdf")
    return png, pdf


def _title(report: EvalReport) -> str:
    return (f"{report.n_fake_generators} fake generators: mean AP {format_metric(report.mean_ap)}, "
            f"mean balanced acc {format_metric(report.mean_balanced_accuracy)} (AP: fakes vs all reals)")


def axis_start(values: list[float]) -> float:
    """Left end of the score axis: the lowest value rounded down to a tenth, with room
    below it (0 when a value is near 0), so that differences near 1 stay visible."""
    return max(0.0, math.floor((min(values, default=0.0) - 0.02) * 10) / 10)  # none defined: from 0


def _bar_chart(report: EvalReport, generators: list[GeneratorMetrics]) -> Figure:
    n = len(generators)
    fig = Figure(figsize=(10, 1.6 + ROW_INCHES * n), layout="constrained")
    ax = fig.add_subplot()
    rows = list(range(n))
    aps = [g.ap for g in generators]
    accs = [g.balanced_accuracy for g in generators]
    start = axis_start([v for v in aps + accs if v is not None])
    end = 1 + 0.09 * (1 - start)  # room for the value labels right of the bars
    # The y axis is inverted below (worst at the top), so y - 0.2 is the upper bar.
    for offset, values, label in ((-0.2, aps, "AP"), (0.2, accs, "balanced accuracy")):
        ys = [y + offset for y in rows]
        ax.barh(ys, [start if v is None else v for v in values], height=0.4, label=label)
        for y, v in zip(ys, values):
            text = "n/a" if v is None else f"{v:.3f}"
            ax.text(start if v is None else v, y, f" {text}", va="center", fontsize=6.5)
    ax.set_yticks(rows, [short_name(g.name) for g in generators], fontsize=8)
    ax.set_ylim(n - 0.4, -0.6)  # worst at the top, read first; no empty band
    ax.set_xlim(start, end)
    ax.set_xticks([t / 20 for t in range(math.ceil(start * 20), 21)] if 1 - start <= 0.5 else
                  [t / 10 for t in range(math.ceil(start * 10), 11)])
    ax.set_xlabel("score" + (f" (axis from {start:.1f})" if start > 0 else ""))
    ax.tick_params(axis="x", top=n > 30, labeltop=n > 30)  # a tall chart has its scale at both ends
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    ax.set_title(_title(report), fontsize=10)
    return fig
def _dot_chart(report: EvalReport, generators: list[GeneratorMetrics]) -> Figure:
    fig = Figure(figsize=(12, 6), layout="constrained")
    ax = fig.add_subplot()
    ranks = range(len(generators))
    with_ap = [(x, g.ap) for x, g in zip(ranks, generators) if g.ap is not None]
    if with_ap:
        ax.plot(*zip(*with_ap), ".", markersize=3, label="AP")
    balanced = [math.nan if g.balanced_accuracy is None else g.balanced_accuracy for g in generators]  # no reals
    ax.plot(ranks, balanced, ".", markersize=3, alpha=0.6, label="balanced accuracy")
    for value, style, label in ((report.mean_ap, "-", "mean AP"),
                                (report.mean_balanced_accuracy, "--", "mean balanced acc")):
        if value is not None:
            ax.axhline(value, color="grey", linestyle=style, linewidth=0.8, label=label)
    worst = generators[:WORST_LABELLED]
    ax.plot(range(len(worst)), [g.ap if g.ap is not None else g.fake_accuracy for g in worst], "o",
            markerfacecolor="none", markeredgecolor="red", markersize=7)
    names = [f"{i:>2}. {short_name(g.name, 40)}  AP {format_metric(g.ap)}" for i, g in enumerate(worst, start=1)]
    ax.text(0.99, 0.02, f"worst {len(worst)} by AP (circled, left to right):\n" + "\n".join(names),
            transform=ax.transAxes, ha="right", va="bottom", multialignment="left", fontsize=7,
            family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "grey"})
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"generators sorted by AP, worst first (n={len(generators)})")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(_title(report), fontsize=10)
    return fig
