"""Robustness evaluation: metrics per perturbation level, and how they are written and shown.

`eval --perturb` scores every image at `clean` and at every requested level
(`pipelines/perturb.py`); this module turns those scores into one `LevelMetrics` per
level and writes them: the `robustness` section of report.json, robustness.csv (one
row per generator x family x level), one chart per family (`robustness_chart`) and the
console table.

Per level, each from that level's scores only: the metrics of `metrics.METRICS` that
the robustness report carries (accuracy, balanced accuracy, AP and ROC-AUC as for clean, per generator
its fakes against ALL real images of that level; TPR at 1 % and 5 % FPR with the
level's thresholds; the expected calibration error over 15 bins; their definitions
are in `metrics.py` and `DEFINITIONS`), the means over the fake generators and the
worst generator by AP. Undefined values (no reals, no fakes) are None, shown as n/a
and left out of means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from commfor_fast.metrics import ECE_BINS, ROBUSTNESS, THRESHOLD, Summary, format_metric, measure, metrics_of
from commfor_fast.pipelines.perturb import CLEAN, FAMILIES, Level
from commfor_fast.report import short_name, spreadsheet_safe, write_rows

CSV_NAME = "robustness.csv"
CHART_PREFIX = "robustness_"  # robustness_<family>.png and .pdf
DEFINITIONS = {
    "accuracy": "fake when P(fake) is above the report's threshold (report.json's threshold, 0.5 by default); "
                "balanced accuracy = (TPR + TNR) / 2, per generator its fakes vs all real images of that level",
    "ap_auc": "average precision and ROC-AUC; per generator: its fakes vs all real images of that level",
    "tpr_at_fpr": "threshold t = the (floor(alpha * n_real) + 1)-th highest real score of that level, fake when "
                  "score > t (FPR <= alpha); TPR = share of fakes above t, overall and per generator (same t)",
    "ece": f"{ECE_BINS} equal-width bins of P(fake) over [0, 1]; sum over bins of (n_bin / n) * "
           "|share of fakes - mean P(fake)|",
}


# ------------------------------------------------------------------- metrics


@dataclass(kw_only=True)
class LevelMetrics(Summary):
    """Everything measured at one level: the robustness report's metrics (`metrics.Summary`)
    and the worst generator; `to_dict` gives plain JSON types."""

    family: str  # "clean" or a family of perturb.FAMILIES
    level: float | None  # None for clean
    label: str  # "clean", "jpeg=30"
    worst_generator: str | None  # lowest AP among the fake generators
    worst_ap: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "level": self.level, "label": self.label, **self._counts_and_values(),
                "worst_generator": self.worst_generator, "worst_ap": self.worst_ap,
                "generators": [g.to_dict() for g in self.generators]}


def level_metrics(level: Level, labels: np.ndarray, scores: np.ndarray, generator_ids: np.ndarray,
                  generator_names: Sequence[str], threshold: float = THRESHOLD) -> LevelMetrics:
    """The metrics of one level from its scores P(fake) (see the module docstring)."""
    summary = measure(labels, scores, generator_ids, generator_names, ROBUSTNESS, threshold)
    with_ap = [g for g in summary.generators if g.ap is not None]
    worst = min(with_ap, key=lambda g: g.ap) if with_ap else None
    return LevelMetrics(family=level.family, level=level.value, label=level.label, **vars(summary),
                        worst_generator=worst.name if worst else None, worst_ap=worst.ap if worst else None)


def report_section(levels: Sequence[LevelMetrics], applied_to: str, seed: int) -> dict[str, Any]:
    """The `robustness` section of report.json: the definitions, then every level."""
    families = list(dict.fromkeys(m.family for m in levels if m.family != CLEAN))
    return {
        "applied_to": applied_to,
        "noise_seed": seed,
        "families": {name: {"parameter": FAMILIES[name].parameter, "definition": FAMILIES[name].definition}
                     for name in families},
        "metrics": DEFINITIONS,
        "levels": [m.to_dict() for m in levels],
    }


# ------------------------------------------------------------------- outputs


def _level_text(m: LevelMetrics) -> str:
    return "" if m.level is None else f"{m.level:g}"


def csv_columns() -> tuple[str, ...]:
    """robustness.csv's header: the generator, the level, the counts, the per-generator metrics."""
    return ("generator", "family", "level", "n_real", "n_fake",
            *(m.name for m in metrics_of(ROBUSTNESS, "per_generator")))


def write_csv(levels: Sequence[LevelMetrics], path: Path) -> Path:
    """robustness.csv: one row per generator x family x level (`clean` as family clean, level empty)."""
    return write_rows(path, csv_columns(), ((spreadsheet_safe(g.name), m.family, _level_text(m), g.n_real, g.n_fake,
                                             *g.values.values()) for m in levels for g in m.generators))


def format_table(levels: Sequence[LevelMetrics]) -> str:
    """The console table: one row per family x level, overall figures, mean AP over the
    fake generators and the worst generator by AP."""
    columns = metrics_of(ROBUSTNESS, "headline")
    header = ("family", "level", *(c.label for c in columns), "mean AP")
    lines = ["robustness (AP: fakes vs all reals of that level; TPR at 1 %/5 % FPR, thresholds from that level's "
             f"reals; ECE over {ECE_BINS} bins):",
             f"{header[0]:<7} {header[1]:>6}  " + "  ".join(f"{h:>7}" for h in header[2:]) + "  worst generator (AP)"]
    for m in levels:
        cells = (*(c.fmt(m.values[c.name]) for c in columns), format_metric(m.mean_ap))
        worst = f"{short_name(m.worst_generator, 36)} ({format_metric(m.worst_ap)})" if m.worst_generator else "n/a"
        lines.append(f"{m.family:<7} {_level_text(m) or '-':>6}  " + "  ".join(f"{c:>7}" for c in cells) + f"  {worst}")
    return "\n".join(lines)


def write_outputs(levels: Sequence[LevelMetrics], out_dir: Path) -> dict[str, Path]:
    """robustness.csv and a chart per family in `out_dir`; returns the paths by kind."""
    from commfor_fast.robustness_chart import plot_family  # matplotlib only when the outputs are written

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"robustness_csv": write_csv(levels, out_dir / CSV_NAME)}
    for family in dict.fromkeys(m.family for m in levels if m.family != CLEAN):
        paths[f"chart_{family}"], paths[f"chart_{family}_pdf"] = plot_family(
            levels, family, out_dir / f"{CHART_PREFIX}{family}")
    return paths
