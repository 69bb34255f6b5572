"""`commfor-fast inspect DATA` and `convert --dry-run`: what a conversion holds, and what it would do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import CONVERTED_SETTINGS, write_folder_tree
from typer.testing import CliRunner

from commfor_fast.cli import app
from commfor_fast.console_summary import SHOWN
from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.shards import Manifest

runner = CliRunner()


def _row(lines: list[str], key: str) -> list[str]:
    """The cells of the table row that starts with `key`."""
    return re.split(r"\s{2,}", next(line for line in lines if line.startswith(key + "  ")))[1:]


def test_inspect_shows_sets_counts_formats_and_rejects(converted):
    manifest = Manifest.load(converted)
    result = runner.invoke(app, ["inspect", str(converted)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "dataset card: README.md (datasets.load_dataset reads the folder)" in lines
    for name, info in manifest.sets.items():
        assert any(line.startswith(f"  {name}: {info.num_samples} images in {len(info.shards)} shard(s), ")
                   for line in lines)
    for generator in manifest.generators:
        expected = [f"{manifest.sets[s].counts.get(generator, {}).get('0', 0)} / "
                    f"{manifest.sets[s].counts.get(generator, {}).get('1', 0)}" for s in manifest.sets]
        assert _row(lines, generator) == expected
    assert _row(lines, "WEBP") == [f"{manifest.sets[s].formats.get('WEBP', {}).get('0', 0)} / "
                                   f"{manifest.sets[s].formats.get('WEBP', {}).get('1', 0)}" for s in manifest.sets]
    assert any(line.startswith(f"rejected: {len(manifest.rejects)} image(s), e.g. ") for line in lines)
    assert any(line.startswith("resolutions: ") for line in lines)


def test_inspect_warns_of_format_bias(tmp_path, convert_into):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png",) * 20, "real": ("jpeg",) * 20}})
    convert_into(tmp_path / "out", folders=[root], val_frac=0)
    result = runner.invoke(app, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning: format bias: 100% of the 20 PNG images are fake (label 1)" in result.stdout
    assert "warning: format bias: 100% of the 20 JPEG images are real (label 0)" in result.stdout


def test_inspect_of_a_folder_without_shards_is_one_error_line(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: ") and "manifest.json" in result.stderr
    assert "Traceback" not in result.output


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, converted, hf_replica, folder_tree, extra_real,
                                                    capsys):
    """The same settings as the `converted` fixture: the plan must match what converting did."""
    out = tmp_path / "out"
    settings = ConvertSettings(out=out, hf_repo=str(hf_replica), folders=[folder_tree, extra_real], workers=1,
                               shard_size="40KB", partition_size="60KB", seed=3, dry_run=True, **CONVERTED_SETTINGS)
    assert convert(settings, command="pytest") is None
    assert not out.exists()
    lines = capsys.readouterr().out.splitlines()
    manifest = Manifest.load(converted)
    assert lines[0] == f"dry run: nothing is written to {out}"
    assert f"  --hf-repo {hf_replica}, split Systematic: 20 images (real 6, fake 14) in 3 file(s), " \
           f"8 row group(s)" in lines
    assert any(line.startswith(f"  --folder {extra_real}: 8 images (real 8, fake 0) in 1 dataset folder(s)")
               for line in lines)
    planned = {name: int(n) for name, n in re.findall(r"(\w+) (\d+)", next(
        line for line in lines if line.startswith("split: ")).split("(")[0])}
    assert sum(planned.values()) == sum(i.num_samples for i in manifest.sets.values()) + len(manifest.rejects)
    assert set(planned) == set(manifest.sets)
    for generator in manifest.generators:  # planned counts: what was converted, plus its rejects
        cells = _row(lines, generator)
        for cell, info in zip(cells, manifest.sets.values()):
            real, fake = (int(v) for v in cell.split(" / "))
            assert real >= info.counts.get(generator, {}).get("0", 0)
            assert fake >= info.counts.get(generator, {}).get("1", 0)
    expected = next(line for line in lines if line.startswith("expected output: about "))
    value, unit = re.match(r"expected output: about ([\d.]+) (kB|MB)", expected).groups()
    estimate = float(value) * {"kB": 1e3, "MB": 1e6}[unit]
    written = sum(s.bytes for info in manifest.sets.values() for s in info.shards)
    assert 0.7 * written < estimate < 1.3 * written
    assert any(line.startswith("partitions: ") for line in lines)


def test_dry_run_flag_on_the_command_line(tmp_path, folder_tree):
    result = runner.invoke(app, ["convert", "--folder", str(folder_tree), "--out", str(tmp_path / "out"),
                                 "--preresize", "440", "--val-frac", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "expected output: at least " in result.stdout and "440 x 440 x 3 bytes per square image" in result.stdout
    assert not (tmp_path / "out").exists()


MANY = 45  # generators: more than console_summary.ALL_ROWS_UP_TO


@pytest.fixture(scope="module")
def many_generators(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 45 generators holding 1 to 3 fake JPEGs each (a real-only dataset too)."""
    layout = {f"gen{i:02d}": {"fake": ("jpeg",) * (1 + i % 3)} for i in range(MANY)}
    return write_folder_tree(tmp_path_factory.mktemp("many") / "root", {**layout, "photos": {"real": ("jpeg",) * 4}})


def _check_summary(lines: list[str], where: str) -> None:
    """The per-generator table summarised: the 10 with the fewest images, the 10 with the
    most, a histogram of images per generator that counts every generator, where all are."""
    header = next(i for i, line in enumerate(lines) if "(real / fake)" in line and "generator" in line)
    shown = [re.split(r"\s{2,}", line)[0] for line in lines[header + 1:header + 2 * SHOWN + 2]]
    assert shown[:SHOWN] == [f"gen{i:02d}" for i in range(0, MANY, 3)][:SHOWN]  # 1 image each, fewest first
    assert lines[header + 1 + SHOWN] == f"  ... {MANY + 1 - 2 * SHOWN} generators not shown (images 1 to 3) ..."
    assert all(int(g[3:]) % 3 == 2 for g in shown[SHOWN + 1:-1]) and shown[-1] == "photos"  # 3 images, then 4
    assert lines[header + 2 * SHOWN + 3:header + 2 * SHOWN + 6] == [
        f"images over the {MANY + 1} generators:",
        f"    1 |{'#' * 20:<40} 15",  # the generators with one image: 15 of 46
        f"  2-4 |{'#' * 40} 31",
    ]
    assert f"all {MANY + 1} generators: {where}" in lines


def test_inspect_summarises_many_generators(tmp_path, many_generators, convert_into):
    convert_into(tmp_path / "out", folders=[many_generators], val_frac=0)
    result = runner.invoke(app, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    _check_summary(lines, f"commfor-fast inspect {tmp_path / 'out'} --all, or manifest.json's counts per set")
    everything = runner.invoke(app, ["inspect", str(tmp_path / "out"), "--all"]).stdout.splitlines()
    assert all(any(line.startswith(f"gen{i:02d}  ") for line in everything) for i in range(MANY))
    assert not any(line.startswith(("  ... ", "all ")) for line in everything)


def test_dry_run_summarises_many_generators(tmp_path, many_generators, capsys):
    settings = ConvertSettings(out=tmp_path / "out", folders=[many_generators], val_frac=0, workers=1, dry_run=True)
    assert convert(settings, command="pytest") is None
    _check_summary(capsys.readouterr().out.splitlines(), f"inspect {tmp_path / 'out'} --all after converting")
