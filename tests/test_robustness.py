"""Robustness evaluation (`eval --perturb`): the metrics per level on hand-computed
scores, the flag's errors, the outputs, and every image once per level across ranks."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import commfor_fast.evaluate as evaluate_module
from commfor_fast.charts import CHART_DPI, COLUMN_INCHES, chart_name, legibility_problems
from commfor_fast.cli import app
from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.distributed import Dist
from commfor_fast.evaluate import evaluate_shards, gather_scores, score_batches
from commfor_fast.metrics import METRICS, Metric, accuracy, average_precision, expected_calibration_error, \
    roc_auc, threshold_at_fpr, tpr_at_fpr
from commfor_fast.model import CommForDetector
from commfor_fast.pipelines.loader import create_eval_loader
from commfor_fast.pipelines.perturb import FAMILIES, Level, parse_perturbations
from commfor_fast.robustness import LevelMetrics, csv_columns, format_table, level_metrics
from commfor_fast.robustness_chart import LINES_UP_TO, WORST, family_figure, plot_family
from commfor_fast.settings import EvalSettings
from commfor_fast.shards import Manifest

runner = CliRunner()
N_IMAGES = 12
PERTURB = ["jpeg=90,40", "noise=8", "blur=1.5", "resize=0.5"]


# ------------------------------------------------------------------- the chart


def synthetic_levels(n_gen: int) -> list[LevelMetrics]:
    """clean and jpeg=90,60,30 of `n_gen` fake generators (12 images each on average) and
    one real source, each level's fakes scored a little lower."""
    rng = np.random.default_rng(0)
    gids = rng.integers(0, n_gen + 1, 12 * (n_gen + 1))
    labels = (gids > 0).astype(int)
    quality = rng.random(n_gen + 1)
    names = ["real"] + [f"org{i}/generator-with-a-long-name-{i}" for i in range(1, n_gen + 1)]
    return [level_metrics(level, labels, np.clip(labels * quality[gids] * (1 - 0.2 * k) + 0.6 * rng.random(gids.size),
                                                 0, 1), gids, names)
            for k, level in enumerate(parse_perturbations(["jpeg=90,60,30"]))]


@pytest.mark.parametrize("n_gen", [3, 30, 5000])
def test_the_chart_reads_at_3_30_and_5000_generators(n_gen: int, tmp_path: Path) -> None:
    """Files written; one column wide, every text 8 pt or more there; the legend below the
    axes; the worst named; a line per generator up to LINES_UP_TO, bands of the spread beyond."""
    levels = synthetic_levels(n_gen)
    png, pdf = plot_family(levels, "jpeg", tmp_path / "robustness_jpeg")
    with Image.open(png) as img:
        assert img.width == round(COLUMN_INCHES * CHART_DPI)
    assert pdf.read_bytes().startswith(b"%PDF")
    fig = family_figure(levels, "jpeg")
    assert legibility_problems(fig) == []
    ax, legend = fig.axes[0], fig.legends[0]
    renderer = fig.canvas.get_renderer()
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    harshest = {g.name: g.ap for g in levels[-1].generators if g.n_fake}
    worst = sorted(harshest, key=harshest.get)[:min(WORST, n_gen)]
    named = [t.get_text() for t in legend.get_texts() if t.get_text().startswith("org")]
    assert named == [f"{chart_name(name)}: {harshest[name]:.3f}" for name in worst]
    lines = [line for line in ax.get_lines() if line.get_color() == "0.55"]  # the thin grey line of a generator
    if n_gen <= LINES_UP_TO:
        assert len(lines) == n_gen - len(worst) and not ax.collections
    else:
        assert not lines and len(ax.collections) == 2  # the middle 80 % and 50 %
        assert "median" in [t.get_text() for t in legend.get_texts()]
    mean = next(line for line in ax.get_lines() if line.get_label().startswith("mean of"))
    assert list(mean.get_ydata()) == pytest.approx([m.mean_ap for m in levels])
    assert [t.get_text() for t in ax.texts] == [f"{m.mean_ap:.3f}" for m in levels]


def test_the_chart_draws_the_declared_chance_level() -> None:
    levels = synthetic_levels(3)
    levels[0].chance = {"mean_ap": 0.2}  # as `Summary.chance` declares it
    ax = family_figure(levels, "jpeg").axes[0]
    chance = next(line for line in ax.get_lines() if line.get_label().startswith("chance"))
    assert list(chance.get_ydata()) == [0.2, 0.2] and ax.get_ylim()[0] <= 0.2


# ------------------------------------------------------------------- metrics


def test_tpr_at_fpr_by_hand() -> None:
    reals = np.arange(1, 21) / 100  # 0.01 ... 0.20
    fakes = np.array([0.5, 0.195, 0.185, 0.05])
    labels = np.r_[np.zeros(20), np.ones(4)]
    scores = np.r_[reals, fakes]
    # 5 %: one false positive of 20 allowed, t = the 2nd highest real (0.19): 0.5 and 0.195 are above
    assert threshold_at_fpr(reals, 0.05) == pytest.approx(0.19)
    assert tpr_at_fpr(labels, scores, 0.05) == 0.5
    # 1 %: none allowed, t = the highest real (0.20): only 0.5 is above
    assert threshold_at_fpr(reals, 0.01) == pytest.approx(0.20)
    assert tpr_at_fpr(labels, scores, 0.01) == 0.25
    # ties: reals 0.3, 0.3, 0.3, 0.1 at 50 %: t = 0.3, and no real lies above it (FPR 0 <= 0.5)
    assert threshold_at_fpr(np.array([0.3, 0.3, 0.3, 0.1]), 0.5) == 0.3
    assert tpr_at_fpr(np.array([0, 0, 0, 0, 1, 1]), np.array([0.3, 0.3, 0.3, 0.1, 0.3, 0.31]), 0.5) == 0.5
    assert tpr_at_fpr(np.array([1, 1]), np.array([0.2, 0.9]), 0.05) is None  # no reals: undefined


def test_ece_by_hand() -> None:
    # bins of width 1/15: 0.05 -> bin 0, 0.95 -> bin 14, 0.5 -> bin 7, 1.0 -> bin 14 (the last bin is closed)
    labels = np.array([0, 1, 1, 1, 0])
    scores = np.array([0.05, 0.05, 0.95, 0.95, 0.5])
    # bin 0: 2/5 * |1/2 - 0.05|; bin 14: 2/5 * |1 - 0.95|; bin 7: 1/5 * |0 - 0.5|
    assert expected_calibration_error(labels, scores) == pytest.approx(0.18 + 0.02 + 0.1)
    assert expected_calibration_error(np.array([1, 1]), np.array([1.0, 1.0])) == 0.0
    # calibrated within each bin: 10 images at 0.3 (bin 4), 3 of them fake
    assert expected_calibration_error(np.array([1] * 3 + [0] * 7), np.full(10, 0.3)) == pytest.approx(0.0)


def test_level_metrics_by_hand() -> None:
    names = ["real-a", "gen-x", "gen-y"]
    rows = [(0, 0, 0.1), (0, 0, 0.2), (0, 0, 0.3), (0, 0, 0.6),  # four reals
            (1, 1, 0.9), (1, 1, 0.7), (1, 1, 0.25),  # gen-x
            (2, 1, 0.4), (2, 1, 0.65)]  # gen-y
    gids, labels, scores = (np.array(c) for c in zip(*rows))
    m = level_metrics(Level("jpeg", 50), labels, scores, gids, names)
    assert (m.family, m.level, m.label, m.n, m.n_real, m.n_fake) == ("jpeg", 50, "jpeg=50", 9, 4, 5)
    assert m.accuracy == pytest.approx(6 / 9)  # 0.6 real wrong, 0.25 and 0.4 fakes missed
    # both FPRs allow no false positive of 4 reals: t = 0.6
    assert m.threshold_fpr_1pct == m.threshold_fpr_5pct == 0.6
    assert m.tpr_at_fpr_1pct == m.tpr_at_fpr_5pct == pytest.approx(3 / 5)  # 0.9, 0.7, 0.65
    x, y = m.generators[1], m.generators[2]
    assert (x.name, x.tpr_at_fpr_5pct, y.tpr_at_fpr_5pct) == ("gen-x", pytest.approx(2 / 3), 0.5)
    # gen-x's fakes vs all reals: thresholds 0.9 (P 1), 0.7 (P 1), 0.25 (P 3/5) -> (1 + 1 + 3/5) / 3
    assert x.ap == pytest.approx((1 + 1 + 3 / 5) / 3) == average_precision(
        np.r_[np.zeros(4), np.ones(3)], np.r_[0.1, 0.2, 0.3, 0.6, 0.9, 0.7, 0.25])
    # gen-y: 0.65 beats all 4 reals, 0.4 beats 3
    assert y.auc == pytest.approx((4 + 3) / 8) == roc_auc(np.r_[np.zeros(4), np.ones(2)],
                                                          np.r_[0.1, 0.2, 0.3, 0.6, 0.4, 0.65])
    assert m.mean_ap == pytest.approx((x.ap + y.ap) / 2) and m.n_fake_generators == 2
    assert (m.worst_generator, m.worst_ap) == ("gen-y", y.ap)
    assert m.generators[0].ap is None and m.generators[0].real_accuracy == 0.75  # the real source
    assert m.ece == pytest.approx(expected_calibration_error(labels, scores))
    table = format_table([m])
    assert "jpeg" in table and "gen-y" in table and f"{m.mean_ap:.4f}" in table


# --------------------------------------------------------------- bad flags


@pytest.mark.parametrize("spec, says", [
    ("jpg=95", "unknown family 'jpg'"),
    ("jpeg=0", "whole numbers from 1 to 100"),
    ("jpeg=101", "whole numbers from 1 to 100"),
    ("jpeg=9x", "'9x' is not a jpeg level"),
    ("jpeg=75.5", "whole numbers from 1 to 100"),
    ("jpeg=", "'' is not a jpeg level"),
    ("blur=-1", "numbers above 0"),
    ("blur=0", "0 is the clean level"),
    ("noise=-5", "numbers above 0"),
    ("noise=nan", "'nan' is not a noise level"),
    ("resize=1.5", "numbers in (0, 1]"),
    ("resize=0", "numbers in (0, 1]"),
    ("resize=0.12345", "at most 4 decimals"),
    ("jpeg95", "write FAMILY=LEVEL"),
    ("jpeg=50,50", "a level is given twice"),
    ("clean=1", "clean is always evaluated"),
])
def test_a_bad_perturb_spec_is_one_line(tmp_path: Path, spec: str, says: str) -> None:
    """Refused before anything is read (--data need not exist): one line naming the flag,
    the value, what is allowed and a fix."""
    result = runner.invoke(app, ["eval", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
                                 "--perturb", spec])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --perturb ") and "Traceback" not in result.output
    assert repr(spec) in lines[0] and says in lines[0], lines[0]
    assert "e.g. --perturb" in lines[0] or "use one of" in lines[0] or "give only" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_family_given_twice_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
                                 "--perturb", "jpeg=90", "--perturb", "jpeg=30"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --perturb 'jpeg=30': the family jpeg is given twice; put all its "
                                     "levels in one flag, e.g. --perturb jpeg=95,75,50,30")


def test_levels_are_ordered_mild_to_harsh() -> None:
    levels = parse_perturbations(["noise=10,5", "JPEG=30,95,50", "resize=0.5,0.75", "blur=4,1"])
    assert [lv.label for lv in levels] == ["clean", "noise=5", "noise=10", "jpeg=95", "jpeg=50", "jpeg=30",
                                           "resize=0.75", "resize=0.5", "blur=1", "blur=4"]
    assert parse_perturbations(None) == parse_perturbations([]) == (Level("clean"),)
    assert set(FAMILIES) == {"jpeg", "blur", "resize", "noise"}


# ------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images (230-270 px) of two generators and a real source, verbatim."""
    root = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / "src" / (f"gen{i % 2}" if i % 3 else "camera") / ("fake" if i % 3 else "real")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(230, 271, size=2))
        img = np.clip(rng.normal(100 + 40 * (i % 3), 30, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    convert(ConvertSettings(folders=[root / "src"], out=root / "shards", val_frac=0.0, seed=0, workers=1,
                            quiet=True))
    return root / "shards"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("robust-model") / "model.pt"
    torch.save(CommForDetector(model_size="tiny", input_size=224, patch_size=16).state_dict(), path)
    return path


def _settings(data: Path, ckpt: Path, out: Path, **overrides: object) -> EvalSettings:
    base = dict(data=data, out=out, ckpt=ckpt, device="cpu", batch_size=5, num_threads=1, perturb=PERTURB,
                save_scores=True)
    return EvalSettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def robust_run(data: Path, ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`commfor-fast eval --perturb ...` through the CLI: the report folder and the output."""
    out = tmp_path_factory.mktemp("robust-report") / "report"
    args = ["eval", "--data", str(data), "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu",
            "--batch-size", "5", "--num-threads", "1", "--save-scores", "--perturb-seed", "3"]
    result = runner.invoke(app, args + [a for spec in PERTURB for a in ("--perturb", spec)])
    assert result.exit_code == 0, result.output
    return out, result.stdout


LABELS = ["clean", "jpeg=90", "jpeg=40", "noise=8", "blur=1.5", "resize=0.5"]


def test_outputs_hold_every_level(robust_run: tuple[Path, str], data: Path) -> None:
    out, stdout = robust_run
    report = json.loads((out / "report.json").read_text())
    robust = report["robustness"]
    assert [lv["label"] for lv in robust["levels"]] == LABELS
    assert set(robust["families"]) == {"jpeg", "noise", "blur", "resize"}
    assert "4:2:0" in robust["families"]["jpeg"]["definition"]
    assert "2 * ceil(3s) + 1" in robust["families"]["blur"]["definition"]
    assert robust["applied_to"].startswith("decoded images") and robust["noise_seed"] == 3
    assert "15 equal-width bins" in robust["metrics"]["ece"]
    assert report["n"] == N_IMAGES and robust["levels"][0]["ap"] == report["ap"]  # clean is the plain report
    assert report["meta"]["settings"]["perturb"] == PERTURB

    with (out / "robustness.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == csv_columns()
    assert len(rows) == 3 * len(LABELS)  # generators (2 fake, 1 real source) x levels
    assert {(r["family"], r["level"]) for r in rows} == {
        ("clean", ""), ("jpeg", "90"), ("jpeg", "40"), ("noise", "8"), ("blur", "1.5"), ("resize", "0.5")}
    gen0_blur = next(r for r in rows if r["generator"] == "gen0" and r["family"] == "blur")
    level = next(lv for lv in robust["levels"] if lv["label"] == "blur=1.5")
    assert float(gen0_blur["ap"]) == pytest.approx(next(g["ap"] for g in level["generators"] if g["name"] == "gen0"))

    assert (out / "roc_pr.png").is_file() and (out / "roc_pr.pdf").is_file()  # the clean ROC and PR curves
    for family in ("jpeg", "noise", "blur", "resize"):
        with Image.open(out / f"robustness_{family}.png") as img:
            assert [round(d) for d in img.info["dpi"]] == [CHART_DPI, CHART_DPI]
        assert (out / f"robustness_{family}.pdf").read_bytes().startswith(b"%PDF")

    assert "robustness (AP: fakes vs all reals" in stdout
    table = stdout.split("robustness (AP", 1)[1]
    for label in LABELS:
        family, _, value = label.partition("=")
        assert any(line.split()[:2] == [family, value or "-"] for line in table.splitlines()), label
    assert "each image read and decoded once" in stdout
    for label in LABELS:
        assert any(line.split()[:1] == [label] and line.rstrip().endswith("img/s") for line in stdout.splitlines())


def test_scores_per_level_match_the_report(robust_run: tuple[Path, str], data: Path) -> None:
    """Each level's metrics are those of its own scores file (scores_<family>_<level>.parquet)."""
    out, _ = robust_run
    report = json.loads((out / "report.json").read_text())
    manifest = Manifest.load(data)
    names = {"clean": "scores.parquet", "jpeg=90": "scores_jpeg_90.parquet", "jpeg=40": "scores_jpeg_40.parquet",
             "noise=8": "scores_noise_8.parquet", "blur=1.5": "scores_blur_1.5.parquet",
             "resize=0.5": "scores_resize_0.5.parquet"}
    logits = {}
    for recorded, level in zip(report["robustness"]["levels"], parse_perturbations(PERTURB)):
        table = pq.read_table(out / names[level.label]).to_pandas()
        assert len(table) == N_IMAGES and table["key"].is_unique  # every image once at every level
        gids = np.array([manifest.generators.index(g) for g in table["generator"]])
        again = level_metrics(level, table["label"].to_numpy(), table["score"].to_numpy().astype(np.float64),
                              gids, manifest.generators).to_dict()
        for key in ("accuracy", "ap", "auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "ece", "mean_ap"):
            assert again[key] == pytest.approx(recorded[key], abs=1e-6), (level.label, key)
        logits[level.label] = table.sort_values("key")["logit"].to_numpy()
    assert not np.allclose(logits["clean"], logits["jpeg=40"])  # the levels were scored on different images
    assert not np.allclose(logits["clean"], logits["noise=8"])


def test_reference_loader_gives_the_same_levels(robust_run: tuple[Path, str], data: Path, ckpt: Path,
                                                tmp_path: Path) -> None:
    """The PIL executor scores the same levels within the pixel tolerances (tests/test_perturb.py)."""
    out, _ = robust_run
    evaluate_shards(_settings(data, ckpt, tmp_path / "ref", loader="reference", perturb_seed=3))
    for name in ("scores.parquet", "scores_jpeg_40.parquet", "scores_noise_8.parquet", "scores_resize_0.5.parquet"):
        dali = pq.read_table(out / name).to_pandas().sort_values("key")
        ref = pq.read_table(tmp_path / "ref" / name).to_pandas().sort_values("key")
        assert list(dali["key"]) == list(ref["key"])
        assert np.abs(dali["logit"].to_numpy() - ref["logit"].to_numpy()).max() < 0.05, name


class _MeanModel(torch.nn.Module):
    """A stand-in detector where the model is not what is tested: the logit is a fixed
    linear function of the image (so every perturbation moves it), at no cost."""

    timm_name, input_size = "mean-of-pixels", 224

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.mean((1, 2, 3)) + 10 * images[:, :, ::7, ::7].std((1, 2, 3)) - 5)[:, None]


@pytest.fixture
def cheap_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import commfor_fast.model

    monkeypatch.setattr(commfor_fast.model, "load_detector", lambda **kwargs: (_MeanModel(), {"source": "test"}))


def _simulate_two_ranks(monkeypatch: pytest.MonkeyPatch, settings: EvalSettings, drop: int | None = None) -> None:
    """Run `evaluate_shards` as rank 1 then rank 0 of 2 in this process: rank 1's gathered
    scores are kept and handed to rank 0's gather (`drop`: lose that many of rank 1's
    images at the last level, as a broken loader would)."""
    kept: list = []

    def gather(obj, env):
        if env.rank == 1:
            kept.append(obj)
            return [obj]
        return [obj, kept[0]]

    monkeypatch.setattr(evaluate_module, "setup_distributed", lambda device, env: env)
    monkeypatch.setattr(evaluate_module, "teardown_distributed", lambda env: None)
    monkeypatch.setattr(evaluate_module, "all_gather", gather)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert evaluate_shards(settings) is None
    if drop:
        last = kept[0][-1]
        kept[0][-1] = type(last)(last.sets[drop:], last.numbers[drop:], last.generator_ids[drop:],
                                 last.labels[drop:], last.logits[drop:])
    monkeypatch.setenv("RANK", "0")
    evaluate_shards(settings)


def test_two_ranks_score_every_image_once_per_level(data: Path, ckpt: Path, tmp_path: Path, cheap_model: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks (each its half of the set, as under torchrun): the same scores at every
    level as one process, the noise included (seeded per sample, not per rank)."""
    evaluate_shards(_settings(data, ckpt, tmp_path / "one", perturb_seed=3))
    _simulate_two_ranks(monkeypatch, _settings(data, ckpt, tmp_path / "two", perturb_seed=3))
    for name in ("scores.parquet", "scores_jpeg_40.parquet", "scores_noise_8.parquet", "scores_blur_1.5.parquet",
                 "scores_resize_0.5.parquet"):
        one = pq.read_table(tmp_path / "one" / name).to_pandas().sort_values("key")
        two = pq.read_table(tmp_path / "two" / name).to_pandas().sort_values("key")
        assert two["key"].is_unique and list(one["key"]) == list(two["key"]) and len(two) == N_IMAGES
        assert np.allclose(one["logit"], two["logit"], rtol=0, atol=1e-6), name  # batches differ: float sums
    clean, noisy = (pq.read_table(tmp_path / "two" / n).to_pandas().sort_values("key")["logit"].to_numpy()
                    for n in ("scores.parquet", "scores_noise_8.parquet"))
    assert not np.allclose(clean, noisy)


def test_a_level_missing_images_stops_the_report(data: Path, ckpt: Path, tmp_path: Path, cheap_model: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(data, ckpt, tmp_path / "broken", perturb=["noise=8"], save_scores=False)
    with pytest.raises(RuntimeError, match="scored 10 images"):
        _simulate_two_ranks(monkeypatch, settings, drop=2)
    assert not (tmp_path / "broken" / "report.json").exists()


def test_a_registered_metric_reaches_every_output(data: Path, ckpt: Path, tmp_path: Path, cheap_model: None,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    """One `Metric` row (the Brier score) and `eval --perturb` shows it everywhere: report.json
    (overall, mean, per generator, per level), both CSVs and both console tables."""
    brier = Metric("brier", "Brier", lambda g: float(np.mean((g.scores - g.labels) ** 2)), headline=True)
    monkeypatch.setitem(METRICS, "brier", brier)
    out = tmp_path / "report"
    evaluate_shards(_settings(data, ckpt, out, perturb=["noise=8"]))
    report = json.loads((out / "report.json").read_text())
    table = pq.read_table(out / "scores.parquet").to_pandas()
    expected = np.mean((table["score"].to_numpy(np.float64) - table["label"].to_numpy()) ** 2)
    assert report["brier"] == pytest.approx(expected, abs=1e-6)  # scores.parquet holds float32 scores
    noisy = report["robustness"]["levels"][1]
    assert noisy["label"] == "noise=8" and noisy["brier"] != report["brier"] and "mean_brier" in noisy
    assert all("brier" in g for level in report["robustness"]["levels"] for g in level["generators"])
    for name in ("per_generator.csv", "robustness.csv"):
        with (out / name).open(newline="") as f:
            assert next(csv.reader(f))[-1] == "brier", name
    stdout = capsys.readouterr().out
    overall = next(line for line in stdout.splitlines() if line.startswith("overall:"))
    assert overall.endswith(f"Brier {report['brier']:.4f}")
    assert "ECE    Brier  mean AP" in stdout  # the robustness table's header


def test_validation_scoring_is_the_evaluations(data: Path, ckpt: Path, tmp_path: Path, cheap_model: None) -> None:
    """What training's validation calls (`score_batches` over an eval loader, then
    `gather_scores`) gives the scores and metrics that `eval` reports."""
    evaluate_shards(_settings(data, ckpt, tmp_path / "report", perturb=None))
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    saved = pq.read_table(tmp_path / "report" / "scores.parquet").to_pandas()
    loader = create_eval_loader("dali", data, Manifest.load(data), "all", device=torch.device("cpu"), batch_size=5,
                                crop=224, rank=0, world_size=1, num_threads=1)
    mine = score_batches(_MeanModel(), loader, "all", device=torch.device("cpu"), autocast_dtype=torch.float16,
                         use_amp=False)
    loader.close()
    scores = gather_scores(mine, Dist(rank=0, local_rank=0, world_size=1))[0]
    saved_logits = dict(zip((int(key) for key in saved["key"]), saved["logit"]))
    assert sorted(scores.numbers.tolist()) == sorted(saved_logits)  # every image once
    assert scores.logits.tolist() == [saved_logits[n] for n in scores.numbers.tolist()]
    probabilities = torch.sigmoid(torch.from_numpy(scores.logits)).numpy()
    assert accuracy(scores.labels, probabilities) == report["accuracy"]
    assert average_precision(scores.labels, probabilities) == pytest.approx(report["ap"], abs=1e-6)


def test_loaders_split_every_level_across_ranks(data: Path) -> None:
    """Both engines: ranks 0 and 1 of 2 together deliver every image once, with all levels."""
    manifest = Manifest.load(data)
    levels = parse_perturbations(["noise=8", "jpeg=40"])
    for engine in ("dali", "reference"):
        seen, images = [], {}
        for rank in range(2):
            loader = create_eval_loader(engine, data, manifest, "all", device=torch.device("cpu"), batch_size=4,
                                        crop=224, rank=rank, world_size=2, num_threads=1, levels=levels, seed=1)
            for batch in loader:
                assert len(batch.levels) == 3 and batch.levels[0] is batch.images
                assert all(t.shape == batch.images.shape for t in batch.levels)
                seen += [int(n) for n in batch.sample_numbers]
                images.update({int(n): [t[j] for t in batch.levels] for j, n in enumerate(batch.sample_numbers)})
            loader.close()
        assert sorted(seen) == sorted(set(seen)) and len(seen) == N_IMAGES, engine
        assert all(not torch.equal(v[0], v[1]) and not torch.equal(v[0], v[2]) for v in images.values())


def test_preresized_shards_say_where_the_perturbations_apply(data: Path, ckpt: Path, tmp_path: Path,
                                                            cheap_model: None, capsys: pytest.CaptureFixture) -> None:
    src = data.parent / "src"
    shards = tmp_path / "pre"
    convert(ConvertSettings(folders=[src], out=shards, val_frac=0.0, seed=0, workers=1, quiet=True, preresize=256))
    evaluate_shards(_settings(shards, ckpt, tmp_path / "report", perturb=["blur=2"], save_scores=False))
    applied = json.loads((tmp_path / "report" / "report.json").read_text())["robustness"]["applied_to"]
    assert applied.startswith("stored pixels") and "pre-resized (shorter side 256)" in applied
    assert "convert without --preresize" in applied
    assert "stored pixels: these shards are pre-resized" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_processes_score_every_image_once_per_level(data: Path, ckpt: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "commfor_fast",
         "eval", "--data", str(data), "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", "--batch-size", "4",
         "--num-threads", "1", "--save-scores", "--perturb", "noise=8", "--perturb", "jpeg=40"],
        env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [lv["n"] for lv in report["robustness"]["levels"]] == [N_IMAGES] * 3
    for name in ("scores.parquet", "scores_noise_8.parquet", "scores_jpeg_40.parquet"):
        keys = pq.read_table(out / name).column("key").to_pylist()
        assert len(keys) == N_IMAGES == len(set(keys)), name
    assert math.isfinite(report["robustness"]["levels"][1]["ece"])
