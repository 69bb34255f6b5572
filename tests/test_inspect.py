"""`commfor-fast inspect DATA` and `convert --dry-run`: what a conversion holds, and what it would do."""

from __future__ import annotations

import re

from conftest import CONVERTED_SETTINGS, write_folder_tree
from typer.testing import CliRunner

from commfor_fast.cli import app
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
