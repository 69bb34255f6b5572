"""Writing and showing an evaluation report: report.json, per_generator.csv, a chart, a table.

The JSON holds everything (`EvalReport.to_dict`, plus optional run metadata); the CSV
has one row per generator for spreadsheets (an undefined value is an empty cell); its
columns and the console's derive from `metrics.METRICS`; the chart (PNG and PDF, one
paper column wide) is `generator_chart`'s; `format_table` is what the console shows,
summarised beyond 40 generators (`console_summary`). Undefined values print as "n/a".
Generator names in the CSV are escaped against spreadsheet formula injection.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from commfor_fast.console_summary import SCORES, summarise
from commfor_fast.fileio import atomic_write
from commfor_fast.metrics import EVAL, PER_GENERATOR_NOTE, EvalReport, GeneratorMetrics, chance_line, format_metric, \
    metrics_of
from commfor_fast.safetext import printable, spreadsheet_safe

REPORT_JSON = "report.json"
GENERATOR_CSV = "per_generator.csv"
CHART_NAME = "per_generator"  # .png and .pdf (`generator_chart`)
NAME_WIDTH = 44


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """Printable (`safetext.printable`), shortened in the middle: generator ids differ at both ends (org/..., ...-v2)."""
    name = printable(name)
    if len(name) <= width:
        return name
    head = (width - 3) // 2
    return name[:head] + "..." + name[len(name) - (width - 3 - head):]


def by_ap(generators: list[GeneratorMetrics]) -> list[GeneratorMetrics]:
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
    from commfor_fast.generator_chart import plot_report  # matplotlib only when a report is written

    paths["chart"], paths["chart_pdf"] = plot_report(report, out_dir / CHART_NAME)
    return paths


def format_table(report: EvalReport, where: str = f"{GENERATOR_CSV} in the report folder",
                 whole: bool = False) -> str:
    """The report as console text: overall lines, fake generators by AP, real sources.

    Up to `console_summary.ALL_ROWS_UP_TO` rows a table is shown whole; longer ones (the
    real dataset has about 5,000 generators) show the worst and best by AP (real sources:
    by accuracy), a histogram and `where` the whole table is, unless `whole`."""
    r = report
    columns = metrics_of(EVAL, "per_generator")
    lines = [
        f"overall: {r.n} images ({r.n_real} real, {r.n_fake} fake)  "
        + "  ".join(f"{m.label} {m.fmt(r.values[m.name])}" for m in metrics_of(EVAL, "overall")),
        f"mean over {r.n_fake_generators} fake generators: "
        + "  ".join(f"{m.label} {m.fmt(r.values[m.mean_key])}" for m in metrics_of(EVAL, "mean")),
        PER_GENERATOR_NOTE,
    ]
    fakes = by_ap([g for g in r.generators if g.n_fake])
    if fakes:
        header = ("generator (worst AP first)", "n_real", "n_fake", *(m.label for m in columns))
        width = max(min(max(len(g.name) for g in fakes), NAME_WIDTH), len(header[0]))  # the header whole
        rows = [f"{short_name(g.name, width):<{width}}  "
                + "  ".join(f"{c:>9}" for c in (g.n_real, g.n_fake, *(m.fmt(g.values[m.name]) for m in columns)))
                for g in fakes]
        head = f"{header[0]:<{width}}  " + "  ".join(f"{h:>9}" for h in header[1:])
        lines += ["", *summarise(head, rows, [g.ap for g in fakes], noun="fake generators", value_name="AP",
                                 scale=SCORES, where=where, whole=whole)]
    if r.real_sources:
        sources = sorted(r.real_sources, key=lambda s: s.accuracy)
        width = min(max(len(s.name) for s in sources), NAME_WIDTH)
        rows = [f"{short_name(s.name, width):<{width}}  {s.n:>9}  {format_metric(s.accuracy):>9}" for s in sources]
        head = f"{'real source':<{width}}  {'n':>9}  {'acc':>9}"
        lines += ["", *summarise(head, rows, [s.accuracy for s in sources], noun="real sources",
                                 value_name="accuracy", scale=SCORES, where=where, whole=whole)]
    return "\n".join([*lines, "", chance_line(r, EVAL)])
