"""Folder discovery: the broad default and the original's rule (`--discovery original`) on one mixed tree."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import image_bytes
from typer.testing import CliRunner

from commfor_fast.cli import app
from commfor_fast.sources.folders import scan_folder
from commfor_fast.shards import Manifest

LABELS = {"real": 0, "fake": 1}
# ROOT-relative files, all real images except notes.txt.
TREE = ("gen/real/a.jpg", "gen/real/b.JPG", "gen/real/c.tif", "gen/real/d.tiff", "gen/real/e.PNG",
        "gen/real/.hidden.png", "gen/real/sub/f.png", "gen/real/notes.txt", "gen/fake/g.png", "gen/fake/h.jpeg",
        "gen/fake/.x.jpg", "gen/fake/.cache/i.png", ".other/fake/j.png")
BROAD = ["gen/fake/g.png", "gen/fake/h.jpeg", "gen/real/a.jpg", "gen/real/b.JPG", "gen/real/c.tif",
         "gen/real/d.tiff", "gen/real/e.PNG", "gen/real/sub/f.png"]
ORIGINAL = [".other/fake/j.png", "gen/fake/.x.jpg", "gen/fake/g.png", "gen/fake/h.jpeg", "gen/real/.hidden.png",
            "gen/real/a.jpg", "gen/real/d.tiff"]


def _tiff(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "TIFF")
    return buf.getvalue()


@pytest.fixture()
def mixed_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for i, rel in enumerate(TREE):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an image\n" if rel.endswith(".txt") else _tiff(i) if "tif" in path.suffix.lower()
                         else image_bytes("jpeg" if "jp" in path.suffix.lower() else "png", i))
    return root


def test_broad_rule_takes_any_case_tif_and_subfolders_and_counts_what_the_original_differs_on(mixed_tree):
    source, units = scan_folder(mixed_tree, LABELS, 0)
    assert sorted(u.name for u in units) == BROAD
    assert source.summary["images_only_this_rule_takes"] == 4  # b.JPG, c.tif, e.PNG, sub/f.png
    assert source.summary["images_only_the_other_rule_takes"] == 2  # the hidden .hidden.png and .x.jpg
    assert any("4 image(s) the original would not have seen" in w and "2 hidden image(s)" in w
               and "--discovery original" in w for w in source.warnings), source.warnings


def test_original_rule_is_lower_case_endings_directly_in_label_folders_hidden_included(mixed_tree):
    source, units = scan_folder(mixed_tree, LABELS, 0, discovery="original")
    assert sorted(u.name for u in units) == ORIGINAL
    assert {u.generators for u in units} == {("gen",), (".other",)}
    assert source.summary["discovery"] == "original"
    assert source.summary["images_only_the_other_rule_takes"] == 4
    assert any("leaves out 4 image(s)" in w and "takes 2 hidden" in w for w in source.warnings), source.warnings


def test_original_rule_on_a_folder_of_upper_case_files_is_an_error_naming_the_fix(tmp_path):
    folder = tmp_path / "root" / "cam" / "real"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"IMG_{i}.JPG").write_bytes(image_bytes("jpeg", i))
    result = CliRunner().invoke(app, ["convert", "--quiet", "--workers", "1", "--folder", str(tmp_path / "root"),
                                      "--out", str(tmp_path / "out"), "--discovery", "original"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--discovery broad (3 image(s) there)" in lines[0], lines


def test_discovery_flag_reaches_the_conversion_and_a_bad_value_is_one_line(tmp_path, mixed_tree):
    runner = CliRunner()
    args = ["convert", "--quiet", "--workers", "1", "--folder", str(mixed_tree), "--val-frac", "0"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--discovery", "original"])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.sets["all"].num_samples == len(ORIGINAL)
    assert manifest.settings["discovery"] == "original"
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--discovery", "strict"])
    assert bad.exit_code == 2 and "--discovery 'strict': choose one of broad, original" in bad.stderr
