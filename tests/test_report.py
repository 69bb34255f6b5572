"""Report output: JSON, CSV, console table and the chart, for a few and for many generators."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from commfor_fast.charts import CHART_DPI, COLUMN_INCHES
from commfor_fast.console_summary import ALL_ROWS_UP_TO, SCORE_BINS, SHOWN
from commfor_fast.generator_chart import plot_report
from commfor_fast.metrics import EvalReport, evaluate
from commfor_fast.report import csv_columns, format_table, write_report


def few_generators() -> EvalReport:
    rows = [  # (generator id, label, score)
        (0, 0, 0.1), (0, 0, 0.3), (0, 0, 0.6),
        (1, 1, 0.9), (1, 1, 0.7), (1, 0, 0.2),
        (2, 1, 0.4),
        (3, 1, 0.55), (3, 1, 0.05),
        (4, 1, 0.8),
    ]
    gids, labels, scores = (np.array(col) for col in zip(*rows))
    names = ["real_imagenet", "stabilityai/stable-diffusion-2", "gan_x", "pixart", "dall-e"]
    return evaluate(labels, scores, gids, names)


def many_generators(n_gen: int) -> EvalReport:
    rng = np.random.default_rng(0)
    gids = rng.integers(0, n_gen, 20 * n_gen)
    labels = (gids > 0).astype(int)
    quality = rng.random(n_gen)
    scores = np.clip(labels * quality[gids] + 0.6 * rng.random(gids.size), 0, 1)
    names = ["real"] + [f"org{i}/a-generator-with-a-rather-long-name-{i}" for i in range(1, n_gen)]
    return evaluate(labels, scores, gids, names)


def test_write_report_files(tmp_path: Path) -> None:
    report = few_generators()
    paths = write_report(report, tmp_path / "out", meta={"ckpt": "model.pt", "split": "PublicEval"})
    assert set(paths) == {"json", "csv", "chart", "chart_pdf"} and all(p.is_file() for p in paths.values())
    assert paths["chart_pdf"].read_bytes().startswith(b"%PDF")

    data = json.loads(paths["json"].read_text())
    assert data["meta"] == {"ckpt": "model.pt", "split": "PublicEval"}
    assert data["n"] == 10 and data["generators"][2]["ap_within"] is None
    assert EvalReport.from_dict(data) == report

    with paths["csv"].open(newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == csv_columns()
    assert [r[0] for r in rows[1:]] == [g.name for g in report.generators]
    gan = dict(zip(rows[0], rows[3]))
    assert gan["generator"] == "gan_x" and gan["n_fake"] == "1" and gan["n_real"] == "0"
    assert float(gan["ap"]) == 0.5 and gan["real_accuracy"] == "" and gan["ap_within"] == ""

    with Image.open(paths["chart"]) as img:
        assert [round(d) for d in img.info["dpi"]] == [CHART_DPI, CHART_DPI]
        img.verify()
        assert img.format == "PNG" and img.width == round(COLUMN_INCHES * CHART_DPI) and img.height > 300


def test_table_shows_names_sorted_by_ap_and_na() -> None:
    table = format_table(few_generators())
    lines = table.splitlines()
    assert lines[0].startswith("overall: 10 images (4 real, 6 fake)")
    assert "mean over 4 fake generators" in lines[1]
    rows = [line for line in lines if line.startswith(("stabilityai", "gan_x", "pixart", "dall-e"))]
    # worst AP first: pixart 5/12, gan_x 1/2, then the two with AP 1
    assert [r.split()[0] for r in rows[:2]] == ["pixart", "gan_x"]
    assert "n/a" in rows[1]  # gan_x has no reals of its own: real_acc and AP_within
    assert "real source" in table and "real_imagenet" in table


def test_no_reals_prints_na_everywhere(tmp_path: Path) -> None:
    report = evaluate(np.array([1, 1]), np.array([0.9, 0.2]), np.array([0, 1]), ["a", "b"])
    table = format_table(report)
    assert "AP n/a" in table and "AUC n/a" in table
    plot_report(report, tmp_path / "chart.png")
    with Image.open(tmp_path / "chart.png") as img:
        img.verify()


def test_chart_of_a_report_without_fakes(tmp_path: Path) -> None:
    report = evaluate(np.array([0, 0]), np.array([0.1, 0.7]), np.array([0, 0]), ["real"])
    with Image.open(plot_report(report, tmp_path / "none.png")[0]) as img:
        img.verify()


def test_a_short_table_is_printed_whole() -> None:
    report = many_generators(ALL_ROWS_UP_TO + 1)
    lines = format_table(report).splitlines()
    assert sum(line.startswith("org") for line in lines) == ALL_ROWS_UP_TO
    assert not any(line.startswith("all ") for line in lines)


def test_thousands_of_generators_print_a_summary() -> None:
    """5,000 fake generators: the worst and best 10 by AP, a histogram, where all are; not 5,000 lines."""
    report = many_generators(5001)
    ranked = sorted((g for g in report.generators if g.n_fake), key=lambda g: g.ap)
    lines = format_table(report).splitlines()
    assert len(lines) < 60 and max(len(line) for line in lines) < 160  # long names shortened
    header = lines.index(next(line for line in lines if line.startswith("generator (worst AP first)")))
    rows = lines[header + 1:header + 2 * SHOWN + 2]
    ap = 1 + lines[header].split()[4:].index("AP")  # the name column: one word in a row, four in the header
    assert [float(r.split()[ap]) for r in rows[:SHOWN]] == [round(g.ap, 4) for g in ranked[:SHOWN]]
    assert rows[SHOWN] == f"  ... {5000 - 2 * SHOWN:,} fake generators not shown (AP {ranked[SHOWN].ap:.4f} to " \
                          f"{ranked[-SHOWN - 1].ap:.4f}) ..."
    assert [float(r.split()[ap]) for r in rows[SHOWN + 1:]] == [round(g.ap, 4) for g in ranked[-SHOWN:]]
    assert lines[header + 2 * SHOWN + 3] == "AP over the 5,000 fake generators:"
    bars = lines[header + 2 * SHOWN + 4:header + 2 * SHOWN + 4 + SCORE_BINS]
    assert bars[0].startswith("  0.20-0.28 |") and bars[-1].startswith("  0.92-1.00 |")
    assert sum(int(b.rsplit(" ", 1)[1].replace(",", "")) for b in bars) == 5000
    assert sum(0.92 <= g.ap for g in ranked) == int(bars[-1].rsplit(" ", 1)[1].replace(",", ""))
    assert lines[header + 2 * SHOWN + 4 + SCORE_BINS] == "all 5,000 fake generators: per_generator.csv in the report folder"
    assert sum(line.startswith("org") for line in format_table(report, whole=True).splitlines()) == 5000


def test_generators_without_ap_are_counted_not_ranked() -> None:
    """Without reals every AP is n/a: the summary says so and still lists worst and best by nothing."""
    n = ALL_ROWS_UP_TO + 5
    report = evaluate(np.ones(n, int), np.linspace(0, 1, n), np.arange(n), [f"g{i}" for i in range(n)])
    lines = format_table(report).splitlines()
    assert f"AP over the {n} fake generators ({n} n/a, not ranked):" in lines
    assert f"all {n} fake generators: per_generator.csv in the report folder" in lines


def test_many_real_sources_print_a_summary() -> None:
    """45 real sources (each with a fake generator's images beside it): the worst and best by accuracy."""
    n = ALL_ROWS_UP_TO + 5
    gids = np.repeat(np.arange(n), 4)
    labels = np.tile([0, 0, 1, 1], n)
    scores = np.tile([0.2, 0.7, 0.9, 0.8], n) * np.repeat(np.linspace(0.5, 1, n), 4)
    report = evaluate(labels, scores, gids, [f"source{i}" for i in range(n)])
    lines = format_table(report).splitlines()
    header = lines.index(next(line for line in lines if line.startswith("real source")))
    assert lines[header + 1 + SHOWN].startswith(f"  ... {n - 2 * SHOWN} real sources not shown (accuracy ")
    accuracies = sorted(s.accuracy for s in report.real_sources)
    shown = [float(line.split()[-1]) for line in lines[header + 1:header + 2 * SHOWN + 2] if line.startswith("source")]
    assert shown == [round(a, 4) for a in accuracies[:SHOWN] + accuracies[-SHOWN:]]
    assert f"accuracy over the {n} real sources:" in lines
    assert f"all {n} real sources: per_generator.csv in the report folder" in lines
