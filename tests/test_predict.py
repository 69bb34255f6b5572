"""`predict`: folder scanning, per-file errors, parity with the evaluation preprocessing,
rows written as they come, the threshold, the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from commfor_fast.cli import app
from commfor_fast.errors import UserError
from commfor_fast.imageio import decode_rgb
from commfor_fast.model import CommForDetector
from commfor_fast.pipelines.preprocess import normalise
from commfor_fast.pipelines.reference import eval_image
import commfor_fast.predict as predict_module
from commfor_fast.predict import PredictSettings, collect_images, predict


@pytest.fixture(scope="module")
def model() -> CommForDetector:
    torch.manual_seed(0)
    return CommForDetector(model_size="tiny", input_size=224, patch_size=16).eval()


@pytest.fixture(scope="module")
def ckpt(model: CommForDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "detector.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of differently sized and coded images, a corrupt file and a non-image."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def noise(h: int, w: int, channels: int = 3) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze())

    noise(300, 400).save(root / "a.png")
    noise(260, 260).save(root / "b.jpg", quality=90)
    (root / "nested" / "deeper").mkdir(parents=True)
    noise(500, 280).save(root / "nested" / "C.PNG")
    noise(240, 320, 4).save(root / "nested" / "deeper" / "d_rgba.png")
    noise(120, 90).save(root / "nested" / "small.JPEG", format="JPEG")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def reference_probability(model: CommForDetector, path: Path) -> float:
    x = normalise(eval_image(decode_rgb(path.read_bytes()), 224))
    with torch.inference_mode():
        return torch.sigmoid(model(x[None])).item()


def test_collect_images_recurses_and_ignores_case(images: Path) -> None:
    found = collect_images([images])
    assert [p.relative_to(images).as_posix() for p in found.images] == [
        "a.png", "b.jpg", "broken.jpg", "nested/C.PNG", "nested/deeper/d_rgba.png", "nested/small.JPEG"]
    assert found.skipped == [images / "notes.txt"] and found.unreadable == {}
    # A named file is used as given, and duplicates are dropped.
    assert collect_images([images / "a.png", images / "a.png"]).images == [images / "a.png"]


def test_scores_match_the_evaluation_preprocessing(model: CommForDetector, ckpt: Path,
                                                   images: Path) -> None:
    results = predict(PredictSettings(paths=[images], ckpt=ckpt, device="cpu", batch_size=2, workers=2))
    assert len(results) == 6
    by_name = {Path(r.path).name: r for r in results}
    broken = by_name.pop("broken.jpg")
    assert broken.prob_fake is None and broken.verdict is None
    assert "cannot decode" in broken.error
    for name, r in by_name.items():
        assert r.error is None
        assert 0.0 <= r.prob_fake <= 1.0
        assert r.verdict == ("fake" if r.prob_fake > 0.5 else "real")
        assert r.prob_fake == pytest.approx(reference_probability(model, Path(r.path)), abs=1e-5), name
        assert r.prob_fake == pytest.approx(1 / (1 + np.exp(-r.logit)), abs=1e-6)


def test_threshold_sets_the_verdict(ckpt: Path, images: Path) -> None:
    results = predict(PredictSettings(paths=[images], ckpt=ckpt, device="cpu"))
    probs = sorted(r.prob_fake for r in results if r.error is None)
    middle = (probs[1] + probs[2]) / 2  # two files below it, three above
    again = predict(PredictSettings(paths=[images], ckpt=ckpt, device="cpu", threshold=middle))
    assert sorted(r.verdict for r in again if r.error is None) == ["fake"] * 3 + ["real"] * 2
    with pytest.raises(UserError, match="--threshold 1.5: a probability"):
        predict(PredictSettings(paths=[images], ckpt=ckpt, threshold=1.5))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rows_are_on_disk_as_they_come(ckpt: Path, images: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """A killed run keeps what it scored: each batch's rows are on disk before the next batch."""
    out = tmp_path / f"p{suffix}"
    on_disk: list[int] = []
    decoded_batches = predict_module._decoded_batches

    def watched(*args, **kwargs):
        for batch in decoded_batches(*args, **kwargs):
            on_disk.append(len(out.read_text().splitlines()) - (suffix == ".csv"))  # minus the header
            yield batch

    monkeypatch.setattr(predict_module, "_decoded_batches", watched)
    predict(PredictSettings(paths=[images], ckpt=ckpt, device="cpu", batch_size=2, out=out))
    assert on_disk == [0, 2, 4]  # 6 files in batches of 2
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [Path(r["path"]).name for r in rows][:2] == ["a.png", "b.jpg"]
        assert rows[0]["logit"] is not None and rows[2]["error"] and rows[2]["logit"] is None


def test_out_csv_and_json(ckpt: Path, images: Path, tmp_path: Path) -> None:
    settings = PredictSettings(paths=[images / "a.png", images / "broken.jpg"], ckpt=ckpt,
                               device="cpu", out=tmp_path / "res" / "p.csv")
    results = predict(settings)
    with (tmp_path / "res" / "p.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(images / "a.png"), str(images / "broken.jpg")]
    assert float(rows[0]["prob_fake"]) == pytest.approx(results[0].prob_fake)
    assert float(rows[0]["logit"]) == pytest.approx(results[0].logit) and rows[1]["logit"] == ""
    assert rows[0]["error"] == "" and rows[1]["prob_fake"] == "" and "cannot decode" in rows[1]["error"]

    settings.out = tmp_path / "p.json"
    predict(settings)
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["model"]["model_args"]["input_size"] == 224 and doc["threshold"] == 0.5
    assert doc["predictions"][0]["prob_fake"] == pytest.approx(results[0].prob_fake)
    assert doc["predictions"][1]["prob_fake"] is None and doc["predictions"][1]["error"]


def test_bad_settings_are_user_errors(ckpt: Path, images: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    cases = [
        (PredictSettings(paths=[tmp_path / "nope"], ckpt=ckpt), "nope: no such file or folder"),
        (PredictSettings(paths=[tmp_path / "empty"], ckpt=ckpt), "empty: the folder holds no images"),
        (PredictSettings(paths=[images], ckpt=ckpt, out=tmp_path / "x.xlsx"), "end the file name with .csv, .jsonl or .json"),
        (PredictSettings(paths=[images], ckpt=ckpt, batch_size=0), "--batch-size 0"),
        (PredictSettings(paths=[images], ckpt=ckpt, device="tpu"), "--device 'tpu'"),
        (PredictSettings(paths=[images]), "no model given"),
    ]
    for settings, message in cases:
        with pytest.raises(UserError, match=message):
            predict(settings)


def test_cli_prints_a_table(ckpt: Path, images: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(images), "--ckpt", str(ckpt), "--device", "cpu",
                                      "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["path", "logit", "P(fake)", "verdict"]
    assert any("broken.jpg" in line and "error: cannot decode" in line for line in lines)
    assert sum(line.rstrip().endswith(("fake", "real")) for line in lines[1:-1]) == 5
    counts = re.fullmatch(r"6 files: (\d+) fake, (\d+) real, 1 unreadable", lines[-1])
    assert counts is not None and int(counts[1]) + int(counts[2]) == 5
    assert "note: skipped 1 non-image file(s) (notes.txt)" in result.stderr


def test_cli_writes_out_file(ckpt: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.json"
    result = CliRunner().invoke(app, ["predict", str(images / "b.jpg"), "--ckpt", str(ckpt),
                                      "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert json.loads(out.read_text())["predictions"][0]["path"] == str(images / "b.jpg")


def test_cli_missing_path_is_a_one_line_error(ckpt: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "missing.png"), "--ckpt", str(ckpt)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: PATH {tmp_path / 'missing.png'}: no such file or folder; give an existing image or folder"]
