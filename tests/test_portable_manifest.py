"""A converted folder names no local path (issue 24, item 10), and still works wherever it goes.

Everything `convert` writes into OUT (manifest.json, listing.json.gz, balance-checks.json,
the markers, the card, the shards) is searched for the absolute test folder. The runs
that need the real folders (resume, the recorded folder scan, the card's licence) take
them from their own settings: a rerun still resumes, and a copied folder still
inspects, verifies and trains.
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import FOLDER_LAYOUT, image_bytes, run_convert, write_folder_tree
from typer.testing import CliRunner

from commfor_fast.cli import app
from commfor_fast.convert.listing import LISTING_NAME
from commfor_fast.convert.parts import CHECKS_NAME, marker_path
from commfor_fast.convert.plan import scan_sources
from commfor_fast.convert.settings import ConvertSettings, check_settings, resolve_sources
from commfor_fast.errors import UserError
from commfor_fast.shards import CARD_NAME, MANIFEST_NAME, Manifest
from commfor_fast.sources import folders
from commfor_fast.sources.folders import RACY_NS

runner = CliRunner()


def naming(folder: Path, text: str) -> list[str]:
    """The files under `folder` whose bytes (a .gz file's unpacked bytes) hold `text`."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if (gzip.decompress(data) if path.suffix == ".gz" else data).count(text.encode()):
            found.append(path.relative_to(folder).as_posix())
    return found


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, hf_replica: Path, folder_tree: Path, extra_real: Path) -> Path:
    """HF Systematic+Manual and both local roots, every path given absolute, with
    --balance-checked (balance-checks.json) and a --cache-dir. Read-only."""
    out = tmp_path_factory.mktemp("portable") / "shards"
    run_convert(out, hf_repo=str(hf_replica), hf_split="Systematic+Manual", folders=[folder_tree, extra_real],
                val_frac=0.2, balance_checked=True, cache_dir=tmp_path_factory.mktemp("cache"))
    return out


def test_nothing_convert_writes_names_an_absolute_path(shards: Path, tmp_path_factory: pytest.TempPathFactory,
                                                       hf_replica: Path, folder_tree: Path) -> None:
    assert {MANIFEST_NAME, LISTING_NAME, CHECKS_NAME, CARD_NAME} <= {p.name for p in shards.iterdir()}
    assert naming(shards, str(tmp_path_factory.getbasetemp())) == []
    manifest = Manifest.load(shards)
    settings = manifest.settings
    assert (settings["out"], settings["hf_repo"], settings["folders"]) == (
        "shards", "CommunityForensics", ["local", "extra_real"])
    assert [(s["kind"], s["root"]) for s in manifest.sources] == [
        ("hf", "CommunityForensics"), ("folder", "local"), ("folder", "extra_real")]
    assert manifest.sources[0]["repo"] == "CommunityForensics"
    # a reject names its file below its source, as the sample's metadata does
    assert sorted(r["item"] for r in manifest.rejects) == [
        "data/systematic/part-00000.parquet#row 4", "data/systematic/part-00001.parquet#row 5",
        "data/systematic/part-00002.parquet#row 4", "local/mygan/fake/img002.png"]
    assert all((hf_replica / r["item"].split("#")[0]).is_file() for r in manifest.rejects if "#row" in r["item"])
    assert (folder_tree.parent / "local/mygan/fake/img002.png").is_file()
    assert any(w.startswith("--folder local: ignored 1 file(s)") for w in manifest.warnings)
    # the card still found the local replica's licence, through this run's --hf-repo
    assert "hf `CommunityForensics`: cc-by-4.0" in (shards / CARD_NAME).read_text()


def test_a_copied_folder_inspects_and_verifies(shards: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(shards, tmp_path / "elsewhere" / "data"))
    shown = runner.invoke(app, ["inspect", str(moved)])
    assert shown.exit_code == 0, shown.output
    assert "rejected: 4 image(s), e.g. " in shown.output and str(shards) not in shown.output
    checked = runner.invoke(app, ["verify", str(moved), "--quiet"])
    assert checked.exit_code == 0, checked.output


@pytest.mark.slow
def test_a_copied_folder_trains(shards: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(shards, tmp_path / "elsewhere" / "data"))
    args = ["train", "--data", str(moved), "--out", str(tmp_path / "run"), "--device", "cpu", "--model-size", "tiny",
            "--input-size", "224", "--no-pretrained", "--batch-size", "4", "--train-itrs", "1", "--num-threads", "1",
            "--loader", "reference", "--rsa-max-num-ops", "0", "--no-validate"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "final").is_dir()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The folder layout plus an image whose name is not UTF-8 (the listing records its
    path, not only its escaped name), old enough for its folders' stamps to be trusted."""
    root = write_folder_tree(tmp_path / "src" / "local", FOLDER_LAYOUT)
    (root / "mygan" / "fake" / os.fsdecode(b"odd\xff.png")).write_bytes(image_bytes("png", 77))
    time.sleep(2 * RACY_NS / 1e9)
    return root


def test_a_rerun_resumes_reads_the_listing_and_refuses_other_settings(
        tmp_path: Path, tree: Path, hf_replica: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    given = {"hf_repo": str(hf_replica), "hf_split": "Systematic", "folders": [tree], "val_frac": 0.2}
    first = run_convert(out, **given)
    assert first is not None and naming(out, str(tmp_path)) == []
    partitions = len(list((out / "parts").glob("part-*.json")))
    marker_path(out, 1).unlink()  # a run stopped before partition 1 was done
    (out / MANIFEST_NAME).unlink()
    capsys.readouterr()
    again = run_convert(out, **given, quiet=False)
    assert f"converting 1 of {partitions} partition(s) ({partitions - 1} done before)" in capsys.readouterr().err
    assert again is not None and again.fingerprint() == first.fingerprint()
    assert again.to_json() == {**first.to_json(), "settings": {**first.settings, "quiet": False}}
    # the folders' scan is read from listing.json.gz (no fresh listing to record) and
    # gives this run's units exactly, the non-UTF-8 file's path too
    settings = resolve_sources(ConvertSettings(out=out, folders=[tree]))
    _, recorded, fresh_listing = scan_sources(settings, check_settings(settings))
    assert fresh_listing is None
    assert recorded == folders.scan_folder(tree.resolve(), {"real": 0, "fake": 1}, 0)[1]
    assert any(unit.name.startswith("mygan/fake/odd") and "\\xff" in unit.name for unit in recorded)
    with pytest.raises(UserError, match="other settings or other source files"):
        run_convert(out, **{**given, "seed": 4}, dry_run=True)


def test_a_listing_is_not_taken_for_another_folder_of_the_same_name(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out"
    run_convert(out, folders=[tree], val_frac=0)
    twin = Path(shutil.copytree(tree, tmp_path / "twin" / tree.name))
    time.sleep(2 * RACY_NS / 1e9)
    settings = resolve_sources(ConvertSettings(out=out, folders=[twin]))
    sources, units, fresh_listing = scan_sources(settings, check_settings(settings))
    assert fresh_listing is not None  # walked: the listing there was made for `tree`
    assert sources[0].root == str(twin.resolve())
    assert all(unit.path.startswith(str(twin.resolve()) + "/") for unit in units)


def test_the_card_written_again_reads_the_licence_where_this_run_finds_the_replica(tmp_path: Path,
                                                                                   hf_replica: Path) -> None:
    out = tmp_path / "out"
    run_convert(out, hf_repo=str(hf_replica), hf_split="Manual", val_frac=0)
    card = (out / CARD_NAME).read_text()
    assert "cc-by-4.0" in card
    (out / CARD_NAME).unlink()
    run_convert(out, hf_repo=str(hf_replica), hf_split="Manual", val_frac=0)  # from the recorded manifest
    assert (out / CARD_NAME).read_text() == card
