"""Robustness evaluation: metrics per perturbation level, and how they are written and shown.

`eval --perturb` scores every image at `clean` and at every requested level
(`pipelines/perturb.py`); this module turns those scores into one `LevelMetrics` per
level and writes them: the `robustness` section of report.json, robustness.csv (one
row per generator x family x level), one chart per family and the console table.

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
from matplotlib.figure import Figure

from commfor_fast.metrics import ECE_BINS, ROBUSTNESS, THRESHOLD, Summary, format_metric, measure, metrics_of
from commfor_fast.pipelines.perturb import CLEAN, FAMILIES, Level
from commfor_fast.report import axis_start, save_chart, short_name, spreadsheet_safe, write_rows

CSV_NAME = "robustness.csv"
CHART_PREFIX = "robustness_"  # robustness_<family>.png and .pdf
WORST_LABELLED = 5
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


def _nan(values: Sequence[float | None]) -> list[float]:
    """Undefined values as NaN: a gap in a plotted line."""
    return [np.nan if v is None else v for v in values]


def _ap_curves(steps: Sequence[LevelMetrics]) -> dict[str, list[float | None]]:
    """AP per level of each fake generator (of the first level) that has an AP at some level."""
    by_name = [{g.name: g.ap for g in m.generators} for m in steps]
    curves = {g.name: [aps.get(g.name) for aps in by_name] for g in steps[0].generators if g.n_fake}
    return {name: ys for name, ys in curves.items() if any(y is not None for y in ys)}


def _draw_generators(ax: Any, xs: list[int], curves: dict[str, list[float | None]]) -> list[str]:
    """Every curve thin and grey but the worst at the harshest level, coloured and named; returns those."""
    harshest = len(xs) - 1
    worst = sorted((n for n in curves if curves[n][harshest] is not None), key=lambda n: curves[n][harshest])
    worst = worst[:WORST_LABELLED]
    alpha = max(0.08, min(0.5, 8 / len(curves)))
    others = [n for n in curves if n not in worst]
    for name in others:
        ax.plot(xs, _nan(curves[name]), color="0.55", linewidth=0.7, alpha=alpha,
                label=f"other generators ({len(others)})" if name == others[0] else None)
    colours = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
    for colour, name in zip(colours, worst):
        ys = curves[name]
        ax.plot(xs, _nan(ys), color=colour, linewidth=1.3, marker=".",
                label=f"{short_name(name, 34)}: {ys[harshest]:.3f}")
    return worst


def _draw_mean(ax: Any, xs: list[int], means: list[float | None], n_curves: int) -> None:
    """The mean over generators, bold, with its value at every level."""
    ax.plot(xs, _nan(means), color="black", linewidth=2.8, marker="o", label=f"mean over {n_curves} generators",
            zorder=5)
    for x, v in zip(xs, means):
        if v is not None:
            ax.annotate(f"{v:.3f}", (x, v), xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8,
                        fontweight="bold", zorder=6)


def plot_family(levels: Sequence[LevelMetrics], family: str, path: Path) -> tuple[Path, Path]:
    """AP per fake generator against the level (clean first, then mild to harsh) for one
    family: a thin line per generator, the mean over generators bold with its values,
    the worst generators at the harshest level coloured and named. PNG (200 dpi) and PDF."""
    steps = [m for m in levels if m.family == CLEAN] + [m for m in levels if m.family == family]
    xs = list(range(len(steps)))
    curves = _ap_curves(steps)
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.add_subplot()
    worst: list[str] = []
    if not curves:
        ax.text(0.5, 0.5, "no AP defined: the test set has no real or no fake images", ha="center", va="center",
                transform=ax.transAxes)
    else:
        worst = _draw_generators(ax, xs, curves)
        means = [m.mean_ap for m in steps]
        _draw_mean(ax, xs, means, len(curves))
        values = [y for ys in curves.values() for y in ys if y is not None] + [v for v in means if v is not None]
        ax.set_ylim(axis_start(values), 1.02)
        ax.set_xlim(-0.25, xs[-1] + 0.25)
        fig.legend(loc="outside right upper", fontsize=7.5,
                   title=f"worst {len(worst)} at {family}={steps[-1].level:g} (AP)", title_fontsize=8)
    ax.set_xticks(xs, ["clean"] + [f"{m.level:g}" for m in steps[1:]])
    ax.set_xlabel(f"{FAMILIES[family].parameter}, mild to harsh")
    ax.set_ylabel("AP (fakes vs all reals of the level)")
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{family}: AP per fake generator (thin), mean bold, worst {len(worst)} in colour", fontsize=10)
    return save_chart(fig, path)


def write_outputs(levels: Sequence[LevelMetrics], out_dir: Path) -> dict[str, Path]:
    """robustness.csv and a chart per family in `out_dir`; returns the paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"robustness_csv": write_csv(levels, out_dir / CSV_NAME)}
    for family in dict.fromkeys(m.family for m in levels if m.family != CLEAN):
        paths[f"chart_{family}"], paths[f"chart_{family}_pdf"] = plot_family(
            levels, family, out_dir / f"{CHART_PREFIX}{family}")
    return paths
