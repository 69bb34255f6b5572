"""`commfor-fast demo` at library level on a tiny configuration: a rerun resumes instead
of starting again, other settings start afresh, `--quick` sizes the run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from commfor_fast.demo.run import OUTPUTS, RECORD, prepare_out, quick_sized, run_demo
from commfor_fast.shards import FORMAT_VERSION
from commfor_fast.errors import UserError
from commfor_fast.settings import DEMO_QUICK, DemoSettings


def tiny(out: Path, **changes: object) -> DemoSettings:
    settings = DemoSettings(out=out, device="cpu", fakes_per_generator=2, test_per_source=1, batch_size=4,
                            train_itrs=2, num_threads=1, loader="reference")
    return dataclasses.replace(settings, **changes)


def _printed(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


@pytest.mark.slow
def test_a_rerun_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    run_demo(tiny(out))
    first = _printed(capsys)
    assert "rendering demo images" in first and "resumed from" not in first
    assert "| ETA " in first  # training lines, stdout not a terminal
    image = next((out / "data" / "folders").rglob("*.*"))
    rendered_at = image.stat().st_mtime_ns
    (ckpt,) = (out / "run").glob("ckpt-*.pt")
    log = (out / "run" / "metrics.jsonl").read_text()

    report = run_demo(tiny(out, device="auto"))  # the device does not change what the demo writes
    again = _printed(capsys)
    assert "are complete: kept" in again and "is complete already" in again
    assert f"resumed from {ckpt} at iteration 2" in again
    assert image.stat().st_mtime_ns == rendered_at and ckpt.is_file()
    assert (out / "run" / "metrics.jsonl").read_text() == log  # nothing trained twice
    assert report.n == 7 and (out / "report" / "report.json").is_file()


def test_other_settings_start_afresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert prepare_out(out, tiny(out)) is False  # nothing recorded yet
    for name in OUTPUTS:
        (out / name).mkdir()
    assert prepare_out(out, tiny(out, device="cuda")) is True
    assert all((out / name).is_dir() for name in OUTPUTS)
    assert prepare_out(out, tiny(out, train_itrs=3, seed=1)) is False
    assert capsys.readouterr().out == (f"the demo in {out} was made with other settings (train_itrs 2 -> 3, "
                                       "seed 0 -> 1): starting afresh\n")
    assert not any((out / name).exists() for name in OUTPUTS)
    assert json.loads((out / RECORD).read_text())["train_itrs"] == 3


def test_a_demo_of_an_older_shard_format_starts_afresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_out(tmp_path, tiny(tmp_path)) is False
    record = json.loads((tmp_path / RECORD).read_text())
    (tmp_path / RECORD).write_text(json.dumps({**record, "shard_format": FORMAT_VERSION - 1}))
    (tmp_path / "shards").mkdir()
    assert prepare_out(tmp_path, tiny(tmp_path)) is False
    assert f"(shard_format {FORMAT_VERSION - 1} -> {FORMAT_VERSION}): starting afresh" in capsys.readouterr().out
    assert not (tmp_path / "shards").exists()


def test_a_folder_without_the_record_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt-000000300.pt").write_bytes(b"from a demo of an older version")
    assert prepare_out(tmp_path, tiny(tmp_path)) is False
    assert not (tmp_path / "run").exists()


def test_quick_sizes_the_run_and_refuses_a_size_given_with_it(tmp_path: Path) -> None:
    quick = quick_sized(DemoSettings(out=tmp_path, quick=True, device="cpu"))
    assert {name: getattr(quick, name) for name in DEMO_QUICK} == DEMO_QUICK and quick.device == "cpu"
    assert quick_sized(DemoSettings(out=tmp_path)) == DemoSettings(out=tmp_path)
    with pytest.raises(UserError, match="--quick sets --train-itrs itself; give either --quick or --train-itrs"):
        quick_sized(DemoSettings(out=tmp_path, quick=True, train_itrs=500))
