"""The charts at 3, 30 and 5,000 fake generators: files written, legible at a paper
column's width, legends clear of the data, the extremes named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from test_report import many_generators

from commfor_fast.charts import CHART_DPI, COLUMN_INCHES, FONT_PT, chart_name, legibility_problems
from commfor_fast.generator_chart import BEST, NAMED_UP_TO, WORST, chart_metrics, plot_report, report_figure
from commfor_fast.metrics import EvalReport, evaluate
from commfor_fast.report import by_ap


@pytest.fixture(scope="module", params=[3, 30, 5000])
def report(request: pytest.FixtureRequest) -> EvalReport:
    """A synthetic report of 3, 30 or 5,000 fake generators (and one real source)."""
    return many_generators(request.param + 1)


def _legend_clear_of_data(fig: Figure) -> None:
    """Every legend of `fig` lies outside every axes (so it covers no data point)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers an axes"


def test_generator_chart_files_and_structure(report: EvalReport, tmp_path: Path) -> None:
    n = report.n_fake_generators
    png, pdf = plot_report(report, tmp_path / "per_generator")
    with Image.open(png) as img:
        assert img.width == round(COLUMN_INCHES * CHART_DPI) and [round(d) for d in img.info["dpi"]] == [CHART_DPI] * 2
        assert np.asarray(img.convert("L")).std() > 10  # something was drawn
    assert pdf.read_bytes().startswith(b"%PDF")

    fig = report_figure(report)
    assert fig.get_figwidth() == COLUMN_INCHES and legibility_problems(fig) == []
    _legend_clear_of_data(fig)
    named = fig.axes[-1]
    names = [t.get_text() for t in named.get_yticklabels()]
    ranked = by_ap([g for g in report.generators if g.n_fake])
    if n <= NAMED_UP_TO:
        assert len(fig.axes) == 1 and names == [chart_name(g.name) for g in ranked]  # every one, worst first
    else:  # the distribution on top, the worst and best by AP named below, the rest counted
        assert len(fig.axes) == 2 and len(names) == WORST + 1 + BEST
        assert names[:WORST] == [chart_name(g.name) for g in ranked[:WORST]]
        assert names[WORST] == f"({n - WORST - BEST:,} more)"
        assert names[WORST + 1:] == [chart_name(g.name) for g in ranked[-BEST:]]
        curves = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("chance")]
        assert len(curves) == len(chart_metrics())
        assert curves[0].get_xydata()[1:, 0].size == sum(g.values[chart_metrics()[0].name] is not None
                                                         for g in ranked)  # every generator in its distribution
    # the marker of each metric sits at the generator's value
    for line, metric in zip(named.get_lines(), chart_metrics()):
        assert line.get_label() == metric.label
        first = line.get_xydata()[0]
        assert first[1] == 0 and first[0] == pytest.approx(ranked[0].values[metric.name])
    assert named.get_xlim()[0] < 0 < 1 < named.get_xlim()[1]  # dots on the whole 0-1 axis, not a cut one


def test_chance_levels_the_report_declares_are_drawn() -> None:
    report = many_generators(4)
    report.chance = {"mean_auc": 0.5, "mean_ap": 0.02}  # as `Summary.chance` declares them
    fig = report_figure(report)
    chance = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("chance")]
    assert sorted((line.get_label(), line.get_xdata()[0]) for line in chance) == [
        ("chance AP: 0.02", 0.02), ("chance AUC: 0.5", 0.5)]
    assert len({line.get_linestyle() for line in chance}) == 2  # told apart in the legend
    assert {"chance AP: 0.02", "chance AUC: 0.5"} <= {t.get_text() for t in fig.legends[0].get_texts()}


def test_legibility_catches_small_and_cut_off_text() -> None:
    fig = Figure(figsize=(2 * COLUMN_INCHES, 2))
    fig.text(0.5, 0.5, "small at one column", fontsize=1.5 * FONT_PT)  # 6 pt once halved
    fig.text(0.99, 0.5, "past the right edge", fontsize=3 * FONT_PT)
    problems = legibility_problems(fig)
    assert problems == ["'small at one column' at 6.0 pt", "'past the right edge' cut off at the figure's edge"]


def test_dollar_signs_in_names_are_drawn_as_text(tmp_path: Path) -> None:
    """Two `$` would start matplotlib's math mode (and `$\\frac{$` fails to parse): names are text."""
    names = ["real", "a$b$c", "$\\frac{$"]
    report = evaluate(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.7, 0.4, 0.9]), np.array([0, 0, 1, 2, 2]),
                      names)
    fig = report_figure(report)
    assert legibility_problems(fig) == []  # drawn without a math-mode error
    assert sorted(t.get_text() for t in fig.axes[0].get_yticklabels()) == ["$\\frac{$".replace("$", "\\$"),
                                                                          "a\\$b\\$c"]
    plot_report(report, tmp_path / "dollars")
