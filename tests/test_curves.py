"""ROC and precision-recall curves: their points agree with the report's AUC and AP, a
long curve is thinned without moving it, and the chart reads at 3, 30 and 5,000 generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commfor_fast.charts import CHART_DPI, COLUMN_INCHES, chart_name, legibility_problems
from commfor_fast.curves import RESOLUTION, WORST, curves_figure, pr_points, roc_points, thin, write_curves
from commfor_fast.metrics import average_precision, evaluate, roc_auc
from commfor_fast.report import by_ap


def scored(n_gen: int, per: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Labels, scores (rounded to 2 decimals: many ties), generator ids and names of a
    synthetic test set: one real source and `n_gen` fake generators of varied quality."""
    rng = np.random.default_rng(seed)
    gids = rng.integers(0, n_gen + 1, per * (n_gen + 1))
    labels = (gids > 0).astype(int)
    quality = rng.random(n_gen + 1)
    scores = np.round(np.clip(labels * quality[gids] + 0.6 * rng.random(gids.size), 0, 1), 2)
    return labels, scores, gids, ["real"] + [f"org{i}/generator-with-a-long-name-{i}" for i in range(1, n_gen + 1)]


def test_points_give_the_reports_auc_and_ap() -> None:
    labels, scores, _, _ = scored(5)
    fpr, tpr = roc_points(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and np.all(np.diff(fpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores))  # ties: the diagonal, counted 1/2
    recall, precision = pr_points(labels, scores)
    assert recall[0] == 0 and recall[-1] == 1 and precision[-1] == pytest.approx(labels.mean())
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(average_precision(labels, scores))


def test_points_by_hand() -> None:
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.5, 0.5])
    fpr, tpr = roc_points(labels, scores)
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    recall, precision = pr_points(labels, scores)
    assert recall.tolist() == [0, 0.5, 1, 1] and precision.tolist() == pytest.approx([1, 1, 2 / 3, 0.5])


def test_a_long_curve_is_thinned_without_moving_it() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200_000)
    fpr, tpr = roc_points(labels, rng.random(labels.size) + 0.5 * labels)
    x, y = thin(fpr, tpr)
    assert fpr.size > 100_000 and x.size < 4 * RESOLUTION
    assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1)
    # the drawing does not change: every point is within a grid cell of the kept point before it
    # (a ROC curve never goes back, so that point is the last kept one with a lower or equal x + y)
    before = np.searchsorted(x + y, fpr + tpr, side="right") - 1
    assert np.max(np.maximum(np.abs(x[before] - fpr), np.abs(y[before] - tpr))) <= 1 / RESOLUTION


@pytest.mark.parametrize("n_gen", [3, 30, 5000])
def test_the_chart_reads_at_3_30_and_5000_generators(n_gen: int, tmp_path: Path) -> None:
    labels, scores, gids, names = scored(n_gen)
    report = evaluate(labels, scores, gids, names)
    paths = write_curves(report, labels, scores, gids, names, tmp_path)
    with Image.open(paths["curves"]) as img:
        assert img.width == round(COLUMN_INCHES * CHART_DPI)
    assert paths["curves_pdf"].read_bytes().startswith(b"%PDF")
    fig = curves_figure(report, labels, scores, gids, names)
    assert legibility_problems(fig) == []
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    assert not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    worst = by_ap([g for g in report.generators if g.n_fake])[:WORST]
    assert [t.split(":")[0] for t in texts[:len(worst)]] == [chart_name(g.name) for g in worst]
    assert texts[len(worst)] == f"all images: AUC {report.auc:.4f}, AP {report.ap:.4f}"
    roc, pr = fig.axes
    chance = next(line for line in roc.get_lines() if line.get_label() == "chance")
    assert chance.get_xydata().tolist() == [[0, 0], [1, 1]]
    share = next(line for line in pr.get_lines() if line.get_label().startswith("chance (PR)"))
    assert share.get_ydata()[0] == pytest.approx(labels.mean())
    point = next(line for line in roc.get_lines() if line.get_label().startswith("threshold 0.5"))
    assert point.get_xydata()[0].tolist() == pytest.approx([np.mean(scores[labels == 0] > 0.5),
                                                            np.mean(scores[labels == 1] > 0.5)])


def test_without_reals_the_chart_says_so(tmp_path: Path) -> None:
    labels, scores, gids = np.ones(3, int), np.array([0.2, 0.5, 0.9]), np.zeros(3, int)
    report = evaluate(labels, scores, gids, ["gen"])
    fig = curves_figure(report, labels, scores, gids, ["gen"])
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["needs real and fake images"] * 2
    assert write_curves(report, labels, scores, gids, ["gen"], tmp_path)["curves"].is_file()
