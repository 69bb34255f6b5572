"""The robustness chart of one perturbation family: robustness_<family>.png and .pdf.

AP per fake generator against the level (clean first, then mild to harsh), one paper
column wide (`charts`), drawn to read as well for 3 generators as for 5,000:

- the mean over generators bold, with its value at every level;
- the spread: up to `LINES_UP_TO` generators a thin grey line each; beyond (where a
  line per generator would be a grey band hiding everything), the middle 80 % and
  50 % of the generators at each level as shaded bands, and their median;
- the `WORST` generators at the harshest level in colour, named in the legend with
  their AP there;
- the chance level of the mean AP, where the level's summary declares one
  (`Summary.chance`), dashed.

The legend sits below the axes, never over data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from commfor_fast.charts import FONT_PT, TITLE_PT, chart_name, column_figure, save_chart, style_axes
from commfor_fast.metrics import Summary
from commfor_fast.pipelines.perturb import CLEAN, FAMILIES
from commfor_fast.robustness import LevelMetrics

LINES_UP_TO = 40  # generators drawn as a line each; beyond, bands of the spread
WORST = 5  # generators named, the worst at the harshest level
BANDS = ((10, 90, 0.18), (25, 75, 0.3))  # percentiles of the generators' APs per level, and their shade's alpha
WORST_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink")


def _nan(values: Sequence[float | None]) -> np.ndarray:
    """Undefined values as NaN: a gap in a plotted line."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def ap_curves(steps: Sequence[Summary]) -> dict[str, np.ndarray]:
    """AP per level (NaN where undefined) of each fake generator of the first level that
    has an AP at some level."""
    by_name = [{g.name: g.ap for g in m.generators} for m in steps]
    curves = {g.name: _nan([aps.get(g.name) for aps in by_name]) for g in steps[0].generators if g.n_fake}
    return {name: ys for name, ys in curves.items() if not np.isnan(ys).all()}


def _draw_spread(ax: Axes, xs: list[int], curves: dict[str, np.ndarray], worst: list[str]) -> None:
    """The generators not named: a thin line each, or the bands of their spread and its median."""
    others = [name for name in curves if name not in worst]
    if not others:
        return
    if len(curves) <= LINES_UP_TO:
        alpha = max(0.15, min(0.5, 8 / len(others)))
        for i, name in enumerate(others):
            ax.plot(xs, curves[name], color="0.55", linewidth=0.7, alpha=alpha,
                    label=None if i else f"other generators ({len(others)})")
        return
    table = np.array([curves[name] for name in curves])  # every generator, so the bands are the whole spread
    for low, high, alpha in BANDS:
        ax.fill_between(xs, np.nanpercentile(table, low, axis=0), np.nanpercentile(table, high, axis=0),
                        color="tab:blue", alpha=alpha, linewidth=0, label=f"middle {high - low} % of generators")
    ax.plot(xs, np.nanmedian(table, axis=0), color="tab:blue", linewidth=1, linestyle="--", label="median")


def _draw_worst(ax: Axes, xs: list[int], curves: dict[str, np.ndarray]) -> list[str]:
    """The `WORST` generators at the harshest level, coloured and named with their AP there; returns them."""
    harshest = [name for name in curves if not np.isnan(curves[name][-1])]
    worst = sorted(harshest, key=lambda name: curves[name][-1])[:WORST]
    for colour, name in zip(WORST_COLOURS, worst):
        ax.plot(xs, curves[name], color=colour, linewidth=1.2, marker=".",
                label=f"{chart_name(name)}: {curves[name][-1]:.3f}")
    return worst


def _draw_mean(ax: Axes, xs: list[int], means: np.ndarray, n_curves: int) -> None:
    """The mean over generators, bold, with its value at every level."""
    ax.plot(xs, means, color="black", linewidth=2.2, marker="o", markersize=4, label=f"mean of {n_curves:,}",
            zorder=5)
    for x, v in zip(xs, means):
        if not np.isnan(v):
            ax.annotate(f"{v:.3f}", (x, v), xytext=(0, 5), textcoords="offset points", ha="center",
                        fontsize=FONT_PT, fontweight="bold", zorder=6)


def family_figure(levels: Sequence[LevelMetrics], family: str) -> Figure:
    """The chart of `family` from every level measured (see the module docstring)."""
    levels = [m for m in levels if m.family == CLEAN] + [m for m in levels if m.family == family]
    labels = ["clean"] + [f"{m.level:g}" for m in levels[1:]]
    xs = list(range(len(levels)))
    curves = ap_curves(levels)
    fig = column_figure(3.0 + 0.17 * (WORST + 4))
    ax = fig.add_subplot()
    if not curves:
        ax.text(0.5, 0.5, "no AP defined:\nno real or no fake images", ha="center", va="center",
                transform=ax.transAxes, fontsize=FONT_PT)
    else:
        worst = _draw_worst(ax, xs, curves)
        _draw_spread(ax, xs, curves, worst)
        means = _nan([m.values.get("mean_ap") for m in levels])
        _draw_mean(ax, xs, means, len(curves))
        chance = levels[0].chance.get("mean_ap")  # declared by `Metric.chance`
        if chance is not None:
            ax.axhline(chance, color="0.4", linestyle=":", linewidth=0.8, label=f"chance (mean): {chance:.2g}")
        lowest = np.nanmin([np.nanmin(ys) for ys in curves.values()] + [chance if chance is not None else 1.0])
        start = max(0.0, float(np.floor((lowest - 0.02) * 10) / 10))  # scaled to the data
        ax.set_ylim(start, 1.04)  # room for the mean's values above 1
        step = 0.1 if start >= 0.5 else 0.2
        ax.set_yticks(np.round(np.arange(start, 1 + 1e-9, step), 2))
        fig.legend(loc="outside lower center", ncols=1, fontsize=FONT_PT, frameon=False,
                   title=f"worst {len(worst)} at {family}={labels[-1]} (AP there)", title_fontsize=FONT_PT)
    ax.set_xlim(-0.3, xs[-1] + 0.3)
    ax.set_xticks(xs, labels)
    ax.set_xlabel(f"{FAMILIES[family].parameter}, mild to harsh", fontsize=FONT_PT)
    ax.set_ylabel("AP (fakes vs all reals)", fontsize=FONT_PT)
    style_axes(ax)
    fig.suptitle(f"{family}: AP per fake generator", fontsize=TITLE_PT)
    return fig


def plot_family(levels: Sequence[LevelMetrics], family: str, path: Path) -> tuple[Path, Path]:
    """`family_figure` as `path`.png and .pdf; returns (png, pdf)."""
    return save_chart(family_figure(levels, family), path)
