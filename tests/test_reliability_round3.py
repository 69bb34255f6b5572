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
import shutil
import signal
import struct
import subprocess
import sys
import time
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
from commfor_fast.shards import FORMAT_VERSION
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


# ----------------------------------------------------------------------- 6. a full disk anywhere


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """Mount a real tmpfs of a given size (needs root and mount rights; skipped elsewhere)."""
    mounts = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"fs{len(mounts)}"
        folder.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                               capture_output=True).returncode:
            pytest.skip("cannot mount a small tmpfs here")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)  # a busy one (open logs) detaches too


def test_a_full_disk_during_convert_names_the_shard(source: Path, small_tmpfs) -> None:
    out = small_tmpfs("300k") / "shards"
    line = one_error_line(runner.invoke(app, ["convert", "--folder", str(source), "--out", str(out), "--quiet",
                                              "--val-frac", "0", "--shard-size", "10MB"]))
    assert "cannot write " + str(out / "all") in line and "No space left on device" in line and "None" not in line


def test_torch_and_safetensors_failures_for_space_are_one_line(tmp_path: Path) -> None:
    from commfor_fast.fileio import atomic_write, output_errors

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"cannot write .*ckpt.pt: No space left on device; free some space"):
        with atomic_write(tmp_path / "ckpt.pt") as f:  # torch wraps the OSError into a RuntimeError
            torch.save({"w": torch.zeros(100_000)}, FullDisk() if f else f)
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match=r"cannot write .*final: No space left on device"):
        with output_errors(tmp_path / "final"):
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                               '"No space left on device" }) (os error 28)')


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "final model"])
def test_a_full_disk_during_training_is_one_line(where: str, pristine: Path, small_tmpfs) -> None:
    # the tiny ViT: a checkpoint (weights + AdamW) is about 65 MB, model.pt about 22 MB
    out = small_tmpfs("40m" if where == "checkpoint" else "30m") / "run"
    args = ["train", "--data", str(pristine), "--out", str(out), "--device", "cpu", "--model-size", "tiny",
            "--input-size", "224", "--no-pretrained", "--batch-size", "4", "--train-itrs", "1", "--num-threads", "1",
            "--loader", "reference", "--rsa-max-num-ops", "0", "--no-validate"]
    line = one_error_line(runner.invoke(app, args + (["--ckpt-keep-count", "0"] if where == "final model" else [])))
    assert "No space left on device" in line
    assert ("ckpt-" if where == "checkpoint" else "final") in line


# ------------------------------------------------------ 7, 11. damaged pre-resized pixels and .ids records


@pytest.fixture(scope="module")
def preresized(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preresized") / "shards"
    _convert(source, out, preresize=256, shard_size="10MB")
    return out


def _patch_member(shards: Path, ext: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of the first sample's `ext` member in place (same size: the quick check passes)."""
    from commfor_fast.shards import Manifest, ShardReader

    info = Manifest.load(shards).sets["all"]
    member = ShardReader(shards, info).members(0)[ext]
    with open(shards / info.shards[0].tar, "r+b") as f:
        f.seek(member.offset + offset)
        f.write(data)


def _eval(data: Path, ckpt: Path, out: Path, loader: str) -> list[str]:
    return ["eval", "--data", str(data), "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", "--loader", loader,
            "--num-threads", "1"]


@pytest.mark.parametrize("loader", ["dali", "reference"])
@pytest.mark.parametrize("damage, says", [
    (("image", 10, b"\xff"), "its pixels do not match its .ids record"),
    (("ids", 12, struct.pack("<i", -3)), "the image size -3x"),
    (("ids", 8, struct.pack("<i", 7)), "names sample 7"),
    (("ids", 0, struct.pack("<i", 5)), "the label 5"),
])
def test_damaged_pixels_and_ids_are_one_line(loader: str, damage: tuple, says: str, preresized: Path, ckpt: Path,
                                             tmp_path: Path) -> None:
    shards = Path(shutil.copytree(preresized, tmp_path / "shards"))
    _patch_member(shards, *damage)
    line = one_error_line(runner.invoke(app, _eval(shards, ckpt, tmp_path / "r", loader)))
    assert "sample 0000000" in line and says in line and "commfor-fast verify" in line


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_a_generator_id_out_of_range_is_one_line(loader: str, shards: Path, ckpt: Path, tmp_path: Path) -> None:
    _patch_member(shards, "ids", 4, struct.pack("<i", 99))
    line = one_error_line(runner.invoke(app, _eval(shards, ckpt, tmp_path / "r", loader)))
    assert "generator id 99" in line


# ------------------------------------------------------------------ 8. a damaged middle line of an index


def _damage_index_line(shards: Path) -> Path:
    from commfor_fast.shards import Manifest

    index = shards / Manifest.load(shards).sets["all"].shards[0].index
    lines = index.read_text().split("\n")
    lines[1] = lines[1].replace(" ", " x", 1)[:-1]  # same length: the quick check (size, last line) passes
    index.write_text("\n".join(lines))
    return index


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_a_damaged_index_line_is_one_line_in_eval(loader: str, shards: Path, ckpt: Path, tmp_path: Path) -> None:
    index = _damage_index_line(shards)
    line = one_error_line(runner.invoke(app, _eval(shards, ckpt, tmp_path / "r", loader)))
    assert f"{index}: damaged index line 2" in line


def test_verify_and_the_convert_rerun_handle_a_damaged_index_line(source: Path, shards: Path) -> None:
    from commfor_fast.verify import verify_shards

    pristine_bytes = {p.name: p.read_bytes() for p in shards.rglob("*.idx")}
    index = _damage_index_line(shards)
    checked, damaged = verify_shards(shards, progress=False)
    assert [d.shard for d in damaged] == [index.relative_to(shards).as_posix()[:-len(".idx")]]
    assert "damaged index line 2" in damaged[0].problem
    _convert(source, shards, verify_hashes=True)  # the rerun redoes the partition
    assert {p.name: p.read_bytes() for p in shards.rglob("*.idx")} == pristine_bytes


# ------------------------------------------------ 9. manifests of an unexpected shape, 10. counts that disagree


@pytest.mark.parametrize("edit, says", [
    (lambda m: m.update(added_by_a_later_release={"x": 1}), None),  # ignored
    (lambda m: m.pop("generators"), "the key generators is missing"),
    (lambda m: m["sets"]["all"].update(num_samples="16"), 'sets.all.num_samples is "16", not an integer'),
    (lambda m: m["sets"]["all"]["shards"][0].update(bytes=None), "sets.all.shards[0].bytes is null, not an integer"),
    (lambda m: m.update(sets=[]), "sets is [], not an object"),
])
@pytest.mark.parametrize("command", ["eval", "verify", "inspect"])
def test_manifests_of_another_shape(edit, says: str | None, command: str, shards: Path, ckpt: Path,
                                    tmp_path: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    edit(manifest)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    args = {"eval": _eval(shards, ckpt, tmp_path / "r", "reference"), "verify": ["verify", str(shards), "--quiet"],
            "inspect": ["inspect", str(shards)]}[command]
    result = runner.invoke(app, args)
    if says is None:
        assert result.exit_code == 0, result.output
    else:
        assert says in one_error_line(result) and "re-run the convert command" in result.stderr


def test_the_convert_rerun_rebuilds_a_manifest_of_another_shape(source: Path, shards: Path) -> None:
    good = (shards / "manifest.json").read_text()
    manifest = json.loads(good)
    manifest.pop("seed")
    (shards / "manifest.json").write_text(json.dumps(manifest))
    _convert(source, shards)
    assert _without_settings(shards / "manifest.json") == _without_settings(good)


def _without_settings(manifest: Path | str) -> dict:
    """A manifest but for its settings (they name the --out folder, which the copy changed)."""
    text = manifest.read_text() if isinstance(manifest, Path) else manifest
    return {k: v for k, v in json.loads(text).items() if k != "settings"}


def _miscount(shards: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["sets"]["all"]["num_samples"] += 5
    (shards / "manifest.json").write_text(json.dumps(manifest))


def test_a_set_count_that_disagrees_with_its_shards(source: Path, shards: Path, ckpt: Path, tmp_path: Path) -> None:
    good = (shards / "manifest.json").read_text()
    _miscount(shards)
    line = one_error_line(runner.invoke(app, _eval(shards, ckpt, tmp_path / "r", "reference")))
    assert "a set of 21 samples, but its shards hold 16" in line
    result = runner.invoke(app, ["verify", str(shards), "--quiet"])
    assert result.exit_code == 1 and "manifest.json: set all: a set of 21 samples" in result.stdout
    _convert(source, shards)
    assert _without_settings(shards / "manifest.json") == _without_settings(good)


# --------------------------------------------------------------- 12. noise on a side over 65,536 px


def test_dali_noise_on_a_very_long_image_is_refused(shards: Path, ckpt: Path, tmp_path: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["sets"]["all"]["resolutions"]["70000x2"] = {"1": 1}  # as a 70000 x 2 px image records itself
    (shards / "manifest.json").write_text(json.dumps(manifest))
    line = one_error_line(runner.invoke(app, _eval(shards, ckpt, tmp_path / "r", "dali") + ["--perturb", "noise=5"]))
    assert "70000x2" in line and "--loader reference" in line


# ----------------------------------------------------------------- 15. a FIFO in place of an index


@pytest.mark.parametrize("command", ["verify", "eval"])
def test_a_fifo_in_place_of_an_index_does_not_hang(command: str, shards: Path, ckpt: Path, tmp_path: Path) -> None:
    from commfor_fast.shards import Manifest

    index = shards / Manifest.load(shards).sets["all"].shards[0].index
    index.unlink()
    os.mkfifo(index)
    args = ["verify", str(shards), "--quiet"] if command == "verify" else _eval(shards, ckpt, tmp_path / "r", "dali")
    result = subprocess.run([sys.executable, "-m", "commfor_fast", *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert "not a regular file" in (result.stdout + result.stderr)
    assert result.returncode == (1 if command == "verify" else 2)


# --------------------------------------------------------- 14. workers end when `convert` is killed

POOL_PARENT = """
import multiprocessing as mp, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from commfor_fast.convert.worker import init_pool_worker
ctx = mp.get_context("spawn")
pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=init_pool_worker, initargs=(None, ctx.Queue(), os.getpid()))
pool.submit(os.getpid).result()  # the worker is up and initialised; now it waits, idle, for the next task
print(" ".join(str(p.pid) for p in mp.active_children()), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_pool_workers_end_when_their_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers and all(map(_alive, workers))
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a worker outlived its parent"


# ------------------------------------------------------------ 16. the pre-resized size is limited too


def test_the_pixel_limit_applies_to_the_pre_resized_size(source: Path, tmp_path: Path) -> None:
    from PIL import Image

    from commfor_fast.shards import Manifest

    root = Path(shutil.copytree(source, tmp_path / "src"))
    Image.new("RGB", (4000, 2), (200, 10, 10)).save(root / "gen0" / "fake" / "strip.png")  # 24 kB or so
    out = tmp_path / "shards"
    _convert(root, out, preresize=256, shard_size="10MB")
    manifest = Manifest.load(out)
    assert [r["item"].rsplit("/", 1)[-1] for r in manifest.rejects] == ["strip.png"]
    assert "512000x256" in manifest.rejects[0]["reason"]
    assert sum(s.bytes for s in manifest.sets["all"].shards) < 4_000_000


# ------------------------------------------------------------------------- 17. advice that fits


def test_an_unreadable_shard_is_not_blamed_on_the_output(shards: Path, ckpt: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import commfor_fast.shards as shards_module

    def refuse(path: object, *args: object, **kwargs: object):  # root ignores the mode bits: refuse as a user
        if str(path).endswith(".tar"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(shards_module, "open", refuse, raising=False)
    line = one_error_line(runner.invoke(app, _eval(shards, ckpt, tmp_path / "r", "reference")))
    assert "cannot read" in line and ".tar: Permission denied" in line and "output folder" not in line


def test_a_folder_of_an_older_shard_format_says_so(source: Path, shards: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["format_version"] = 1
    (shards / "manifest.json").write_text(json.dumps(manifest))
    plan = json.loads((shards / "plan.json").read_text())
    plan["fingerprint"] = "written-by-format-v1"
    (shards / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(UserError, match=rf"holds shards written by an earlier or later commfor-fast, in format v1 "
                                        rf"\(this version reads and writes v{FORMAT_VERSION}\), so they must be "
                                        r"converted again"):
        _convert(source, shards)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_offers_the_one_before(pristine: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", str(pristine), "--out", str(out), "--device", "cpu", "--model-size", "tiny",
            "--input-size", "224", "--no-pretrained", "--batch-size", "4", "--num-threads", "1", "--loader",
            "reference", "--rsa-max-num-ops", "0", "--no-validate", "--ckpt-every", "1", "--ckpt-keep-count", "-1"]
    assert runner.invoke(app, args + ["--train-itrs", "2"]).exit_code == 0
    newest = out / "ckpt-000000002.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    line = one_error_line(runner.invoke(app, args + ["--train-itrs", "3"]))
    assert f"{newest}: the newest checkpoint of this run cannot be resumed from" in line
    assert "--ckpt" not in line and "delete it to resume from the checkpoint before it, ckpt-000000001.pt" in line


# ----------------------------------------------------------- 18. a deleted dataset card is written again


def test_the_convert_rerun_writes_a_deleted_card_again(source: Path, shards: Path) -> None:
    card = (shards / "README.md").read_text()
    manifest = (shards / "manifest.json").read_text()
    (shards / "README.md").unlink()
    assert "no README.md: re-run the convert command" in runner.invoke(app, ["inspect", str(shards)]).stdout
    _convert(source, shards)
    assert (shards / "README.md").read_text() == card
    assert (shards / "manifest.json").read_text() == manifest  # kept as it was


# --------------------------------------------------------- 19. what a resume compares


@pytest.mark.slow
def test_resume_allows_other_threads_but_not_other_data(source: Path, pristine: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(pristine, tmp_path / "data"))
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--device", "cpu", "--model-size", "tiny",
            "--input-size", "224", "--no-pretrained", "--batch-size", "4", "--loader", "reference",
            "--rsa-max-num-ops", "0", "--no-validate", "--ckpt-every", "1", "--train-itrs", "2"]
    assert runner.invoke(app, args + ["--num-threads", "1"]).exit_code == 0
    result = runner.invoke(app, args + ["--num-threads", "2"])  # resumes from the last checkpoint
    assert result.exit_code == 0 and "resumed from" in result.output, result.output
    shutil.rmtree(data)
    _convert(source, data, seed=1)  # the same path, converted again: other shards
    line = one_error_line(runner.invoke(app, args + ["--num-threads", "1"]))
    assert "the shards at --data (converted again; fingerprint)" in line


# --------------------------------------------------------- 20. a dry run refuses what the run refuses


@pytest.mark.parametrize("out_kind, says", [("file", "is a file; give a folder"),
                                            ("other conversion", "holds a conversion with other settings")])
def test_a_dry_run_refuses_what_the_real_run_refuses(out_kind: str, says: str, source: Path, pristine: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    if out_kind == "file":
        out.write_text("a file")
    else:
        shutil.copytree(pristine, out)
    line = one_error_line(runner.invoke(app, ["convert", "--folder", str(source), "--out", str(out), "--dry-run",
                                              "--seed", "5", "--quiet"]))
    assert says in line
