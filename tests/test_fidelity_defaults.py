"""The original's defaults where they were ours to choose: the validation split's size and the precision."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_folder_tree
from typer.testing import CliRunner

import commfor_fast.train
from commfor_fast.cli import app
from commfor_fast.convert.run import convert
from commfor_fast.convert.plan import split_sets
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.settings import TrainSettings, resolve_precision
from commfor_fast.shards import Manifest


@pytest.mark.parametrize(("n", "val"), [(2, 0), (99, 0), (100, 1), (199, 1), (250, 2)])
def test_validation_set_is_floor_of_n_times_val_frac_as_the_original(n: int, val: int) -> None:
    names, which = split_sets(n, 0.01, seed=3)
    assert int(which.sum()) == val
    assert names == (("train", "val") if val else ("all",))


def test_a_small_folder_at_the_default_val_frac_has_no_validation_set(tmp_path: Path) -> None:
    tree = write_folder_tree(tmp_path / "src", {"gen": {"real": ("png",) * 3, "fake": ("png",) * 3}})
    convert(ConvertSettings(folders=[tree], out=tmp_path / "out", workers=1, quiet=True))
    assert {name: info.num_samples for name, info in Manifest.load(tmp_path / "out").sets.items()} == {"all": 6}


@pytest.mark.parametrize(("device", "given", "resolved"), [
    ("cuda", None, True), ("cpu", None, False), ("cuda", False, False), ("cpu", True, True)])
def test_precision_default_is_the_originals_fp16_on_cuda_and_fp32_on_the_cpu(tmp_path: Path, device: str,
                                                                             given: bool | None,
                                                                             resolved: bool) -> None:
    settings = resolve_precision(TrainSettings(data=tmp_path, out=tmp_path, device=device, use_amp=given))
    assert settings.use_amp is resolved and settings.amp_dtype == "fp16"


def test_train_cli_leaves_precision_to_the_device_unless_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[TrainSettings] = []
    monkeypatch.setattr(commfor_fast.train, "train", seen.append)
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    for extra, expected in (([], None), (["--no-use-amp"], False), (["--use-amp"], True)):
        assert CliRunner().invoke(app, [*base, *extra]).exit_code == 0
        assert seen[-1].use_amp is expected
