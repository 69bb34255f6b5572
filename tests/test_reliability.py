"""Hostile cases: damaged shards, corrupted bytes, unwritable or full outputs, resumed logs, odd names.

Each test builds its damage on a private copy of small shards made here, and checks
the one-line error (or the repair) that the user gets instead of a traceback.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from commfor_fast import fileio
from commfor_fast.cli import app, call
from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.errors import UserError
from commfor_fast.metrics import evaluate
from commfor_fast.model import CommForDetector
from commfor_fast.pipelines.loader import create_eval_loader, create_train_stream
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.preprocess import check_preresize
import commfor_fast.predict as predict_module
from commfor_fast.predict import PredictSettings, predict, write_predictions
from commfor_fast.report import format_table, write_report
from commfor_fast.settings import TrainSettings
import commfor_fast.shards as shards_module
from commfor_fast.shards import INDEX_TAIL_BYTES, MANIFEST_NAME, Manifest, SetInfo, check_shard_files, read_index
from commfor_fast.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 JPEGs (230-260 px) of two generators, both labels."""
    root = tmp_path_factory.mktemp("reliability") / "src"
    rng = np.random.default_rng(0)
    for i in range(16):
        folder = root / f"gen{i % 2}" / ("fake" if i % 4 < 2 else "real")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(230, 261, size=2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg", quality=85)
    return root


def _convert(source: Path, out: Path, **overrides: object) -> Manifest | None:
    options = dict(folders=[source], out=out, val_frac=0.0, seed=0, workers=1, quiet=True, shard_size="120KB",
                   partition_size="400KB")
    return convert(ConvertSettings(**{**options, **overrides}), command="pytest")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pristine(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "shards"
    _convert(source, out)
    return out


@pytest.fixture
def shards(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the shards, free to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "shards"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = CommForDetector(model_size="tiny", input_size=224, patch_size=16)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


# A progress line (`progress.Progress` off a terminal prints one every 10 s, so a slow
# machine can show one before the error): "eval: 16/16 img (100%) ... 1.0 img/s".
PROGRESS_LINE = re.compile(r"^[^:]+: \d+(/\d+)? \w+.* \w+/s")


def one_error_line(result) -> str:
    """The single `error: ...` line of a failed command (exit 2, no traceback), the last
    line on stderr; only progress lines may come before it."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert all(PROGRESS_LINE.match(line) for line in lines[:-1]), result.stderr
    assert "Traceback" not in result.output
    return lines[-1]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------ checkpoints (item 1)


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_trust_checkpoint_flag_says_why_it_is_dangerous(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--trust-checkpoint" in result.output and "runs any code" in " ".join(result.output.split())


def test_predict_refuses_a_checkpoint_with_code(tmp_path: Path, source: Path) -> None:
    class RunsCode:
        def __reduce__(self) -> tuple:
            return os.makedirs, (str(tmp_path / "code-ran"),)

    torch.save({"model": {}, "payload": RunsCode()}, tmp_path / "evil.pt")
    line = one_error_line(runner.invoke(app, ["predict", str(source), "--ckpt", str(tmp_path / "evil.pt")]))
    assert "evil.pt: holds Python objects besides tensors" in line and "--trust-checkpoint" in line
    assert not (tmp_path / "code-ran").exists()


# ------------------------------------------------------- damaged shards (item 5)


def _damage(shards: Path, kind: str) -> Path:
    """Damage the first shard in one way; returns the file the error must name."""
    shard = Manifest.load(shards).sets["all"].shards[0]
    tar, index = shards / shard.tar, shards / shard.index
    if kind == "tar cut short":
        tar.write_bytes(tar.read_bytes()[:1500])
        return tar
    if kind == "tar deleted":
        tar.unlink()
        return tar
    if kind == "index deleted":
        index.unlink()
        return index
    if kind == "index garbage":
        index.write_bytes(np.random.default_rng(1).bytes(300))
        return index
    index.write_bytes(index.read_bytes()[:-25])  # "index cut short"
    return index


DAMAGE = ["tar cut short", "tar deleted", "index deleted", "index garbage", "index cut short"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_shards_stop_before_the_pipeline_with_one_line(shards: Path, kind: str) -> None:
    damaged = _damage(shards, kind)
    manifest = Manifest.load(shards)
    with pytest.raises(UserError) as err:
        create_eval_loader("dali", shards, manifest, "all", device=torch.device("cpu"), batch_size=4, crop=224,
                           rank=0, world_size=1, num_threads=1)
    message = str(err.value)
    assert message.startswith(f"{damaged}: ") and f"commfor-fast verify {shards}" in message
    assert "\n" not in message
    with pytest.raises(UserError, match=str(damaged)):
        create_train_stream("reference", shards, manifest, "all", device=torch.device("cpu"), batch_size=4,
                            crop=224, rsa=RSAConfig.from_flags("", "0", "0", False), seed=0, rank=0, world_size=1,
                            num_threads=0)


def test_the_shard_check_reads_a_few_bytes_per_shard(pristine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It opens each index once and never a tar, whatever their size (its time per shard:
    `python -m commfor_fast.bench.shard_check_bench`)."""
    info = Manifest.load(pristine).sets["all"]
    shards = info.shards * (2000 // len(info.shards))
    many = SetInfo(num_samples=sum(s.num_samples for s in shards), shards=shards)
    opened, read = [], []

    class Counted:
        def __init__(self, file: Any) -> None:
            self.file = file

        def read(self, size: int = -1) -> bytes:
            read.append(len(data := self.file.read(size)))
            return data

        def seek(self, *args: int) -> int:
            return self.file.seek(*args)

        def __enter__(self) -> Counted:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    def counted_open(path: Path, *args: Any, **kwargs: Any) -> Counted:
        opened.append(Path(path))
        return Counted(open(path, *args, **kwargs))

    monkeypatch.setattr(shards_module, "open", counted_open, raising=False)
    check_shard_files(pristine, many)
    assert opened == [pristine / shard.index for shard in many.shards]
    assert sum(read) <= len(many.shards) * (64 + INDEX_TAIL_BYTES)


def test_eval_on_a_damaged_shard_is_one_line(shards: Path, ckpt: Path, tmp_path: Path) -> None:
    damaged = _damage(shards, "index garbage")
    line = one_error_line(runner.invoke(app, ["eval", "--data", str(shards), "--ckpt", str(ckpt), "--out",
                                              str(tmp_path / "report"), "--device", "cpu", "--num-threads", "1"]))
    assert str(damaged) in line and "not a DALI v1.2 index" in line


# --------------------------------------------------------- verify (item 7)


def test_verify_passes_intact_shards(pristine: Path) -> None:
    result = runner.invoke(app, ["verify", str(pristine), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"{len(Manifest.load(pristine).sets['all'].shards)} shards intact" in result.stderr


def test_verify_lists_every_damaged_shard(shards: Path) -> None:
    infos = Manifest.load(shards).sets["all"].shards
    first = read_index(shards / infos[0].index)[0]  # a bit flip in stored JPEG bytes
    flip_byte(shards / infos[0].tar, first["image"].offset + first["image"].size // 2)
    second = read_index(shards / infos[1].index)[0]  # the label in .ids: 0 <-> 1
    flip_byte(shards / infos[1].tar, second["ids"].offset)
    (shards / infos[2].index).unlink()
    result = runner.invoke(app, ["verify", str(shards), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines == [
        f"damaged: {shards / infos[0].tar}: sha256 differs from manifest.json (bytes changed)",
        f"damaged: {shards / infos[1].tar}: sha256 differs from manifest.json (bytes changed); sample "
        f"{first_key(shards, infos[1])}: labels disagree (ids {1 - int(json_label(shards, infos[1]))}, "
        f"cls {json_label(shards, infos[1])}, json {json_label(shards, infos[1])})",
        f"damaged: {shards / infos[2].tar}: {Path(infos[2].index).name}: missing",
    ]
    assert f"3 of {len(infos)} shards are damaged" in result.stderr


def first_key(shards: Path, shard) -> str:
    return next(iter(read_index(shards / shard.index)[0].values())).filename.split(".")[0]


def json_label(shards: Path, shard) -> str:
    members = read_index(shards / shard.index)[0]
    with open(shards / shard.tar, "rb") as f:
        f.seek(members["cls"].offset)
        return f.read(members["cls"].size).decode()


def _train_settings(data: Path, out: Path, **overrides: object) -> TrainSettings:
    base = dict(data=data, out=out, device="cpu", model_size="tiny", input_size=224, patch_size=16,
                pretrained=False, batch_size=4, num_threads=1, log_every=1, rsa_max_num_ops="0",
                loader="reference", validate=False, seed=0)
    return TrainSettings(**{**base, **overrides})  # type: ignore[arg-type]


def test_training_checks_hashes_with_a_flag(shards: Path, tmp_path: Path) -> None:
    shard = Manifest.load(shards).sets["all"].shards[1]
    flip_byte(shards / shard.tar, 700)  # same size: only the hash can tell
    with pytest.raises(UserError, match=rf"--verify-hashes: 1 of \d+ shards in {shards} are damaged, e.g. "
                                        rf"{shard.tar}: sha256 differs"):
        train(_train_settings(shards, tmp_path / "run", train_itrs=1, verify_hashes=True))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before any work


# ------------------------------------------------------------ outputs (item 6)


def test_eval_out_naming_a_file_fails_before_scoring(pristine: Path, ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "report.txt").write_text("not a folder")
    line = one_error_line(runner.invoke(app, ["eval", "--data", str(pristine), "--ckpt", str(ckpt), "--out",
                                              str(tmp_path / "report.txt"), "--device", "cpu"]))
    assert line == f"error: --out {tmp_path / 'report.txt'}: is a file; give a folder (it is created if missing)"


@pytest.mark.parametrize("command", ["train", "eval", "predict", "convert"])
def test_an_unwritable_out_is_one_line_before_any_work(command: str, pristine: Path, source: Path, ckpt: Path,
                                                       tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, so nothing can be made below it")
    out = tmp_path / "file" / "out"
    args = {
        "train": ["train", "--data", str(pristine), "--out", str(out), "--no-pretrained", "--model-size", "tiny",
                  "--input-size", "224", "--device", "cpu"],
        "eval": ["eval", "--data", str(pristine), "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu"],
        "predict": ["predict", str(source), "--ckpt", str(ckpt), "--out", str(out / "pred.csv")],
        "convert": ["convert", "--folder", str(source), "--out", str(out), "--quiet"],
    }[command]
    line = one_error_line(runner.invoke(app, args))
    assert "cannot create or write in it (Not a directory)" in line and str(tmp_path / "file") in line


class _FullDisk:
    """Stands in for `open` in `fileio`: files whose writes fail as on a full disk."""

    def __init__(self, real_open) -> None:
        self.real_open = real_open

    def __call__(self, path, mode="r", *args, **kwargs):
        f = self.real_open(path, mode, *args, **kwargs)

        def write(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f


def test_a_full_disk_leaves_no_empty_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = evaluate(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]), np.array([0, 1, 1]), ["real", "gen"])
    monkeypatch.setattr(fileio, "open", _FullDisk(open), raising=False)
    monkeypatch.setattr(predict_module, "open", _FullDisk(open), raising=False)  # its rows stream to the file
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'r' / 'report.json'}: No space left on device; "
                                        "free some space"):
        write_report(report, tmp_path / "r")
    with pytest.raises(UserError, match="pred.csv: No space left on device"):
        write_predictions([], tmp_path / "pred.csv", {})
    assert os.listdir(tmp_path / "r") == [] and not (tmp_path / "pred.csv").exists()  # no 0-byte files


def test_space_and_permission_errors_anywhere_are_one_line(capsys: pytest.CaptureFixture) -> None:
    def fails() -> None:  # e.g. appending to metrics.jsonl, which is not an atomic write
        raise PermissionError(errno.EACCES, "Permission denied", "/data/run/metrics.jsonl")

    with pytest.raises(typer.Exit) as err:
        call(fails)
    assert err.value.exit_code == 2
    assert capsys.readouterr().err == ("error: cannot write /data/run/metrics.jsonl: Permission denied; choose an "
                                       "output folder you can write to\n")


@pytest.fixture
def full_tmpfs(tmp_path: Path):
    """A real, full 64 KiB file system (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        try:
            with open(mount / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk_is_one_line(full_tmpfs: Path, source: Path, ckpt: Path) -> None:
    line = one_error_line(runner.invoke(app, ["predict", str(source), "--ckpt", str(ckpt), "--out",
                                              str(full_tmpfs / "pred.csv")]))
    assert f"its folder {full_tmpfs}: cannot create or write in it (No space left on device)" in line


# ------------------------------------------------------------ manifest (item 8)


def test_rerunning_convert_rebuilds_a_garbage_manifest(source: Path, pristine: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(pristine, tmp_path / "shards"))
    (out / MANIFEST_NAME).write_bytes(b"\x00garbage{")
    with pytest.raises(UserError, match="is unreadable"):
        Manifest.load(out)
    rebuilt = _convert(source, out)

    def same_data(manifest: Manifest) -> dict:
        return {k: v for k, v in manifest.to_json().items() if k != "settings"}  # settings name the --out

    assert rebuilt is not None and same_data(rebuilt) == same_data(Manifest.load(pristine))
    assert same_data(Manifest.load(out)) == same_data(rebuilt)


# ---------------------------------------------------------- smaller points (item 9)


def test_resume_drops_replayed_metrics_and_stale_checkpoint_files(pristine: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_train_settings(pristine, run, train_itrs=4, ckpt_every=2))
    (run / "ckpt-000000004.pt").unlink()  # as if killed after iteration 4 was logged but before its checkpoint
    (run / ".ckpt-000000004.pt.0123abcd.tmp").write_bytes(b"half a checkpoint")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"itr": 5, "lo')  # a line cut short by the kill
    train(_train_settings(pristine, run, train_itrs=4, ckpt_every=2))
    itrs = [json.loads(line)["itr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert itrs == [1, 2, 3, 4]
    assert not list(run.glob(".*.tmp"))


def test_generator_names_cannot_inject_spreadsheet_formulas(tmp_path: Path) -> None:
    names = ["real", "=HYPERLINK(\"x\")", "+1", "-cmd", "@SUM(A1)", "plain-name"]
    gids = np.array([0, 0, 1, 2, 3, 4, 5])
    report = evaluate(np.array([0, 0, 1, 1, 1, 1, 1]), np.linspace(0.1, 0.9, 7), gids, names)
    write_report(report, tmp_path)
    with open(tmp_path / "per_generator.csv", newline="") as f:
        cells = [row[0] for row in csv.reader(f)][1:]
    assert sorted(cells) == sorted(["real", "'=HYPERLINK(\"x\")", "'+1", "'-cmd", "'@SUM(A1)", "plain-name"])
    assert "generator (worst AP first)" in format_table(report)  # the header is never cut to "...)"


def test_preresize_mismatch_names_what_eval_takes() -> None:
    with pytest.raises(UserError) as err:
        check_preresize(440, 224)
    message = str(err.value)
    assert "the model's input size 224" in message and "--ckpt / --hf-model" in message
    assert "use a model of input size 384" in message


def test_hf_rejects_are_named_by_image_name(tmp_path: Path, hf_replica: Path) -> None:
    manifest = convert(ConvertSettings(hf_repo=str(hf_replica), hf_split="Systematic", out=tmp_path / "out",
                                       val_frac=0.0, workers=1, quiet=True), command="pytest")
    assert manifest is not None and len(manifest.rejects) == 3
    assert all(r["item"].split("#row ")[1].isdigit() and r["image_name"].endswith((".png", ".jpeg"))
               for r in manifest.rejects)


def test_predict_reports_an_unreadable_folder(source: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = source / "gen0" / "fake"
    scandir = os.scandir

    def refuse(path):  # root ignores permissions, so refuse the way a chmod 000 folder would
        if os.fspath(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    results = predict(PredictSettings(paths=[source], ckpt=ckpt, device="cpu", workers=1))
    errors = [(r.path, r.error) for r in results if r.error]
    assert errors == [(str(locked), "cannot read the folder: Permission denied")]
    assert len(results) == 16 - 4 + 1
