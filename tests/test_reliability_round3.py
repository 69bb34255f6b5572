"""Hostile inputs, round 3 (issue 23): each test is one numbered defect of that issue.

The fixtures are small and built here (or reused from `test_reliability.py`): a
write-protected output, a checkpoint with NaN weights, formula-like and
escape-code names, levels that print alike, damaged indexes and manifests, a FIFO in
place of an index. Each test checks what the user gets now: the file left alone, one
`error:` line with exit code 2, or the right answer, instead of a traceback, a hang
or a silent wrong result.
"""

from __future__ import annotations

import builtins
import csv
import errno
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import commfor_fast.predict as predict_module
from commfor_fast.cli import app
from commfor_fast.errors import UserError
from commfor_fast.model import CommForDetector
from commfor_fast.pipelines.perturb import parse_perturbations
from commfor_fast.predict import PredictSettings, predict
from test_reliability import _convert, ckpt, one_error_line, pristine, shards, source  # noqa: F401 (fixtures)

runner = CliRunner()


# ------------------------------------------------- 1. nothing deleted that the run did not create


def test_predict_leaves_a_write_protected_out_file_alone(source: Path, ckpt: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "keep.csv"
    out.write_text("precious results\n")
    out.chmod(0o444)

    def refuse(path: object, *args: object, **kwargs: object):  # root ignores the mode bits: refuse as a user
        if Path(str(path)) == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(predict_module, "open", refuse, raising=False)
    line = one_error_line(runner.invoke(app, ["predict", str(source), "--ckpt", str(ckpt), "--out", str(out)]))
    assert "keep.csv" in line and "Permission denied" in line
    assert out.read_text() == "precious results\n"


# ------------------------------------------------------------------- 2. non-finite weights


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    state = CommForDetector(model_size="tiny", input_size=224, patch_size=16).state_dict()
    state["vit.head.weight"][0, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "diverged.pt"
    torch.save(state, path)
    return path


def test_predict_refuses_nan_weights(source: Path, nan_ckpt: Path) -> None:
    line = one_error_line(runner.invoke(app, ["predict", str(source), "--ckpt", str(nan_ckpt)]))
    assert "diverged.pt: the weight vit.head.weight holds NaN or infinite values" in line


def test_eval_refuses_nan_weights_before_scoring(pristine: Path, nan_ckpt: Path, tmp_path: Path) -> None:
    line = one_error_line(runner.invoke(app, ["eval", "--data", str(pristine), "--ckpt", str(nan_ckpt), "--out",
                                              str(tmp_path / "report"), "--loader", "reference", "--device", "cpu"]))
    assert "NaN or infinite" in line and not (tmp_path / "report" / "report.json").exists()


# ------------------------------------------------------- 4. one CSV escaping rule, 22. printable tables


@pytest.fixture
def hostile_names(tmp_path: Path, source: Path) -> Path:
    """Copies of two images under a formula-like name and a name with an escape code and a newline."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    first = sorted(source.rglob("*.jpg"))[0].read_bytes()
    (folder / "=HYPERLINK(1).jpg").write_bytes(first)
    (folder / "red\x1b[31m\nline.jpg").write_bytes(first)
    return folder


def test_predict_csv_escapes_formulas_and_the_table_escape_codes(hostile_names: Path, ckpt: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(hostile_names)  # a relative name: the cell starts with "="
    runner.invoke(app, ["predict", "=HYPERLINK(1).jpg", "--ckpt", str(ckpt), "--out", str(tmp_path / "p.csv")])
    with open(tmp_path / "p.csv", newline="") as f:
        assert next(csv.DictReader(f))["path"] == "'=HYPERLINK(1).jpg"
    result = runner.invoke(app, ["predict", ".", "--ckpt", str(ckpt)])
    assert result.exit_code == 0 and "\x1b" not in result.stdout
    assert "red\\x1b[31m\\nline.jpg" in result.stdout and len(result.stdout.splitlines()) == 4


@pytest.fixture(scope="module")
def hostile_shards(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards whose fake generator is named like a formula and whose real source holds an escape code
    and a newline."""
    root = tmp_path_factory.mktemp("hostile-gens") / "src"
    images = sorted(source.rglob("*.jpg"))
    for i, image in enumerate(images[:8]):
        folder = root / ('=HYPERLINK("x")|`g`' if i % 2 else "red\x1b[31m\nreal") / ("fake" if i % 2 else "real")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image.name).write_bytes(image.read_bytes())
    out = root.parent / "shards"
    _convert(root, out)
    return out


def test_inspect_and_eval_tables_show_escape_codes_as_text(hostile_shards: Path, ckpt: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(hostile_shards)])
    assert result.exit_code == 0 and "\x1b" not in result.stdout and "red\\x1b[31m\\nreal" in result.stdout
    result = runner.invoke(app, ["eval", "--data", str(hostile_shards), "--ckpt", str(ckpt), "--out",
                                 str(tmp_path / "r"), "--loader", "reference", "--device", "cpu", "--save-scores",
                                 "--scores-format", "csv"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "red\\x" in result.output  # (shortened to the column)
    with open(tmp_path / "r" / "scores.csv", newline="") as f:  # 4. the same escape as per_generator.csv
        generators = {row["generator"] for row in csv.DictReader(f)}
    assert generators == {"'=HYPERLINK(\"x\")|`g`", "red\x1b[31m\nreal"}


def test_the_model_card_table_survives_pipes_backticks_and_newlines(pristine: Path) -> None:
    from commfor_fast.modelcard import model_card
    from commfor_fast.settings import TrainSettings
    from commfor_fast.shards import Manifest

    settings = TrainSettings(data=Path("d|`x`"), out=Path("o"), command="train --out 'a|b`c`\nd'")
    card = model_card(model_args={"input_size": 224, "model_size": "tiny", "patch_size": 16, "freeze_backbone": False},
                      timm_name="vit", settings=settings, manifest=Manifest.load(pristine), train_set="all",
                      schedule={"total_itrs": 1, "warmup": 0, "world_size": 1}, validation=None)
    rows = [line for line in card.splitlines() if line.startswith("| ")]
    command = next(row for row in rows if row.startswith("| command |"))
    assert command == "| command | ``train --out 'a\\|b`c`\\nd'`` |"
    assert all(row.replace("\\|", "").count("|") == 3 for row in rows)  # two cells each, nothing split
    assert "`` d\\|`x` `` (set `all`)" in card


# --------------------------------------------------------- 5. levels that print alike, degenerate ones


@pytest.mark.parametrize("spec, says", [
    ("blur=1.0000001,1.0000002", "a level is given twice (blur=1"),
    ("noise=5,5.0000001", "a level is given twice (noise=5"),
    ("blur=1e-200", "is not a blur level"),
    ("noise=1e-9", "is not a noise level"),
])
def test_levels_that_print_alike_or_do_nothing_are_refused(spec: str, says: str) -> None:
    with pytest.raises(UserError, match=r"^--perturb .*") as caught:
        parse_perturbations([spec])
    assert says in str(caught.value)


# ---------------------------------------------- 13. names that are not UTF-8, a disk full mid-row


def test_predict_csv_keeps_every_row_of_a_name_that_is_not_utf8(source: Path, ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    data = sorted(source.rglob("*.jpg"))[0].read_bytes()
    (folder / "a.jpg").write_bytes(data)
    (Path(os.fsdecode(bytes(folder) + b"/b\xff.jpg"))).write_bytes(data)
    (folder / "c.jpg").write_bytes(data)
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(folder), "--ckpt", str(ckpt), "--out", str(out), "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "b\\xff.jpg", "c.jpg"]


class FillingFile:
    """A file on a disk that fills after `budget` characters: the write that crosses it
    puts its first part on disk, then fails with ENOSPC (as a real full disk does)."""

    def __init__(self, file: object, budget: int) -> None:
        self.file, self.budget = file, budget

    def write(self, text: str) -> int:
        if len(text) > self.budget:
            self.file.write(text[:self.budget])
            self.file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(text)
        return self.file.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)


def test_a_disk_full_mid_row_leaves_whole_jsonl_rows(source: Path, ckpt: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p.jsonl"
    predict(PredictSettings(paths=[source], ckpt=ckpt, out=out, batch_size=4))
    first_batch = sum(len(line) + 1 for line in out.read_text().splitlines()[:4])
    out.unlink()
    monkeypatch.setattr(predict_module, "open", lambda *a, **k: FillingFile(builtins.open(*a, **k), first_batch + 30),
                        raising=False)
    with pytest.raises(UserError, match="p.jsonl: No space left on device"):
        predict(PredictSettings(paths=[source], ckpt=ckpt, out=out, batch_size=4))
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["prob_fake"] is not None for line in lines)


# -------------------------------------------------- 3. bool and float labels, binary metadata columns


def _parquet(path: Path, source: Path, labels: list, label_type: object) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [p.read_bytes() for p in sorted(source.rglob("*.jpg"))[:len(labels)]]
    pq.write_table(pa.table({
        "image_data": pa.array(images, pa.binary()),
        "label": pa.array(labels, label_type),
        "model_name": [f"gen{int(v)}" for v in labels],
        "prompt": pa.array([b"\xff\x00 not text"] * len(labels), pa.binary()),  # skipped: not JSON text
        "image_name": [f"{i}.jpg" for i in range(len(labels))],
    }), path)
    return path


@pytest.mark.parametrize("labels, label_type", [([True, False, True, False], "bool"),
                                                ([1.0, 0.0, 1.0, 0.0], "float64")])
def test_bool_and_whole_float_labels_make_verified_shards(labels: list, label_type: str, source: Path,
                                                          tmp_path: Path) -> None:
    from commfor_fast.shards import Manifest, ShardReader
    from commfor_fast.verify import verify_shards

    parquet = _parquet(tmp_path / "data.parquet", source, labels, label_type)
    out = tmp_path / "shards"
    _convert(source, out, folders=[], hf_repo=str(parquet))
    assert verify_shards(out, progress=False)[1] == []
    reader = ShardReader(out, Manifest.load(out).sets["all"])
    samples = [reader.read(i) for i in range(len(reader))]
    assert sorted(s["cls"] for s in samples) == [b"0", b"0", b"1", b"1"]
    meta = json.loads(samples[0]["json"])
    assert meta["label"] in (0, 1) and type(meta["label"]) is int and "prompt" not in meta
    assert meta["image_name"].endswith(".jpg")


@pytest.mark.parametrize("labels, label_type, says", [
    ([1.0, 0.5], "float64", "label 0.5 in the double column 'label'"),
    (["1", "0"], "string", "the column 'label' is of type string"),
])
def test_other_labels_are_one_line_naming_the_column(labels: list, label_type: str, says: str, source: Path,
                                                     tmp_path: Path) -> None:
    parquet = _parquet(tmp_path / "data.parquet", source, labels, label_type)
    line = one_error_line(runner.invoke(app, ["convert", "--hf-repo", str(parquet), "--out", str(tmp_path / "o"),
                                              "--quiet"]))
    assert "data.parquet" in line and says in line
