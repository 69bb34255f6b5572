"""Report output: JSON, CSV, console table and the chart, for a few and for many generators."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from commfor_fast.metrics import EvalReport, evaluate
from commfor_fast.report import BAR_CHART_MAX, _bar_chart, _by_ap, axis_start, csv_columns, format_table, plot_report, \
    write_report


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
        assert [round(d) for d in img.info["dpi"]] == [200, 200]
        img.verify()
        assert img.format == "PNG" and img.width == 2000 and img.height > 300


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


def test_axis_is_scaled_to_the_data() -> None:
    assert axis_start([0.97, 1.0, 0.99]) == 0.9  # differences near 1 stay visible
    assert axis_start([0.55, 0.9]) == 0.5
    assert axis_start([0.01, 1.0]) == 0.0


def test_hundred_and_more_generators_get_named_bars_with_values(tmp_path: Path) -> None:
    report = many_generators(121)
    generators = _by_ap([g for g in report.generators if g.n_fake])
    assert len(generators) == 120
    ax = _bar_chart(report, generators).axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert len(names) == 120 and names[0].startswith(generators[0].name[:20])  # worst first, every name
    values = [t.get_text().strip() for t in ax.texts]
    assert values == [f"{g.ap:.3f}" for g in generators] + [f"{g.balanced_accuracy:.3f}" for g in generators]
    assert ax.get_xlim()[0] == axis_start([v for g in generators for v in (g.ap, g.balanced_accuracy)])
    png, _ = plot_report(report, tmp_path / "many")
    with Image.open(png) as img:  # one 0.3-inch row per generator at 200 dpi: names at about 22 px
        assert img.height >= 120 * 0.3 * 200


def test_thousands_of_generators_become_a_dot_plot(tmp_path: Path) -> None:
    report = many_generators(BAR_CHART_MAX + 2)
    assert report.n_fake_generators == BAR_CHART_MAX + 1
    png, pdf = plot_report(report, tmp_path / "many.png")
    assert png == tmp_path / "many.png" and pdf == tmp_path / "many.pdf"
    with Image.open(png) as img:
        img.load()
        assert img.size == (2400, 1200)  # fixed size, not one row per generator
        assert np.asarray(img.convert("L")).std() > 10  # something was drawn
    table = format_table(report)
    assert len(table.splitlines()) > BAR_CHART_MAX
    assert max(len(line) for line in table.splitlines()) < 160  # long names shortened


def test_chart_of_a_report_without_fakes(tmp_path: Path) -> None:
    report = evaluate(np.array([0, 0]), np.array([0.1, 0.7]), np.array([0, 0]), ["real"])
    with Image.open(plot_report(report, tmp_path / "none.png")[0]) as img:
        img.verify()
