"""`eval --threshold`: a fixed threshold, or one chosen on the val set's reals at a fixed FPR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from commfor_fast.cli import app
from commfor_fast.errors import UserError
from commfor_fast.evaluate import evaluate_shards
from commfor_fast.metrics import threshold_at_fpr
from commfor_fast.settings import EvalSettings
from commfor_fast.threshold import ThresholdSpec, choose_on_val, parse_threshold

runner = CliRunner()


def test_the_spec_is_a_probability_or_a_false_positive_rate() -> None:
    assert parse_threshold("0.5") == ThresholdSpec(value=0.5)
    assert parse_threshold("1") == ThresholdSpec(value=1.0)
    assert parse_threshold("val@fpr=0.05") == ThresholdSpec(fpr=0.05) and parse_threshold("val@fpr=0.05").on_val
    for bad in ("1.5", "-0.1", "half", "val@fpr=0", "val@fpr=1", "val@fpr=", "val@tpr=0.9", "nan"):
        with pytest.raises(UserError, match="--threshold .*: give a probability in \\[0, 1\\]"):
            parse_threshold(bad)


def test_chosen_on_the_reals_at_the_rate() -> None:
    labels = np.array([0] * 10 + [1] * 3)
    scores = np.r_[np.arange(10) / 10, 0.95, 0.05, 0.5]  # reals 0.0 ... 0.9
    chosen = choose_on_val(labels, scores, 0.2, Path("train-data"))
    # two reals (0.8, 0.9) may lie above: the third highest real is the threshold
    assert (chosen.threshold, chosen.achieved_fpr, chosen.n_real) == (0.7, 0.2, 10)
    assert chosen.record["chosen_on"] == "train-data set val, its real images"
    with pytest.raises(UserError, match="the val set of train-data has no real images"):
        choose_on_val(np.array([1, 1]), np.array([0.2, 0.3]), 0.05, Path("train-data"))


class _Brightness(torch.nn.Module):
    """A stand-in detector: the logit grows with the mean pixel (no model is tested here)."""

    timm_name, input_size = "brightness", 224

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (4 * images.mean((1, 2, 3)))[:, None]


@pytest.fixture
def cheap_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import commfor_fast.model

    monkeypatch.setattr(commfor_fast.model, "load_detector",
                        lambda **kwargs: (_Brightness(), {"source": "test"}))


def _settings(data: Path, out: Path, **overrides: object) -> EvalSettings:
    base = dict(data=data, out=out, ckpt=out / "unused.pt", device="cpu", batch_size=8, num_threads=1,
                loader="reference", save_scores=True)
    return EvalSettings(**{**base, **overrides})  # type: ignore[arg-type]


def _scores(out: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(out / "scores.parquet").to_pandas()
    return table["label"].to_numpy(), table["score"].to_numpy().astype(np.float64)


def test_val_threshold_is_chosen_on_val_and_measures_the_other_sets(converted: Path, tmp_path: Path,
                                                                    cheap_model: None) -> None:
    evaluate_shards(_settings(converted, tmp_path / "val", sets="val"))  # the val scores, to check against
    val_labels, val_scores = _scores(tmp_path / "val")
    report = evaluate_shards(_settings(converted, tmp_path / "chosen", threshold="val@fpr=0.25"))

    data = json.loads((tmp_path / "chosen" / "report.json").read_text())
    assert data["meta"]["sets"] == ["train"]  # val chooses, so it is not reported on
    expected = threshold_at_fpr(val_scores[val_labels == 0], 0.25)
    assert data["threshold"] == report.threshold == pytest.approx(expected, abs=1e-6)
    assert 0.0 < expected < 1.0 and expected != 0.5
    choice = data["threshold_choice"]
    assert choice["fpr"] == 0.25 and choice["n_real"] == int(np.sum(val_labels == 0))
    assert choice["achieved_fpr"] <= 0.25 and choice["chosen_on"] == f"{converted} set val, its real images"
    labels, scores = _scores(tmp_path / "chosen")  # the train set's, measured at the chosen threshold
    assert report.real_accuracy == pytest.approx(np.mean(scores[labels == 0] <= report.threshold))
    assert report.fake_accuracy == pytest.approx(np.mean(scores[labels == 1] > report.threshold))


def test_val_data_chooses_from_another_folder(converted: Path, tmp_path: Path, cheap_model: None) -> None:
    """The usual case: the test set is a folder of its own (one set), the val set is the training data's."""
    report = evaluate_shards(_settings(converted, tmp_path / "fixed", sets="train", threshold="0.62"))
    assert report.threshold == 0.62
    chosen = evaluate_shards(_settings(converted, tmp_path / "other", sets="train", threshold="val@fpr=0.5",
                                       val_data=converted.parent / "." / converted.name))
    assert json.loads((tmp_path / "other" / "report.json").read_text())["threshold_choice"]["fpr"] == 0.5
    assert chosen.n == report.n and chosen.threshold != 0.62


@pytest.mark.parametrize(("args", "message"), [
    (["--threshold", "val@fpr=0.05", "--sets", "val"], "--sets 'val': the val set chooses --threshold"),
    (["--threshold", "val@fpr=0.05", "--val-data", "NOWHERE"], "--val-data NOWHERE: no such folder"),
    (["--threshold", "2"], "--threshold '2': give a probability in [0, 1]"),
])
def test_threshold_errors_are_one_line(converted: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["eval", "--data", str(converted), "--out", str(tmp_path / "r"),
                                 "--ckpt", str(tmp_path / "none.pt"), *[a.replace("NOWHERE", str(tmp_path / "no"))
                                                                        for a in args]])
    assert result.exit_code == 2
    line = result.output.strip().replace(str(tmp_path / "no"), "NOWHERE")
    assert len(line.splitlines()) == 1 and message in line


def test_a_folder_without_a_val_set_says_where_to_find_one(converted: Path, tmp_path: Path) -> None:
    one_set = tmp_path / "one-set"
    one_set.mkdir()
    manifest = json.loads((converted / "manifest.json").read_text())
    manifest["sets"] = {"all": manifest["sets"]["train"]}
    (one_set / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="--val-data .* has no val set \\(its sets: all\\); give --val-data FOLDER"):
        evaluate_shards(_settings(converted, tmp_path / "r", threshold="val@fpr=0.05", val_data=one_set))
