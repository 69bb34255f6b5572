"""The command line's help and defaults: one source of truth (the settings dataclasses),
booleans as --flag/--no-flag, full defaults, an example per command, shell completion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

import commfor_fast.train
from commfor_fast.cli import app
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.pipelines.ops import DEFAULT_OPS
from commfor_fast.settings import BenchSettings, DemoSettings, EvalSettings, PredictSettings, TrainSettings

runner = CliRunner()
SETTINGS = {"predict": PredictSettings, "train": TrainSettings, "eval": EvalSettings, "convert": ConvertSettings,
            "demo": DemoSettings, "bench": BenchSettings}
# CLI parameter names that differ from their settings field
RENAMED = {"folder": "folders"}


def _commands() -> dict[str, click.Command]:
    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_default_comes_from_the_settings(name: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(SETTINGS[name])}
    command = _commands()[name]
    checked = 0
    for param in command.params:
        field = fields.get(RENAMED.get(param.name, param.name))
        assert field is not None, f"{name} --{param.name} has no settings field"
        if param.required or field.default is dataclasses.MISSING:
            continue
        assert param.default == field.default, f"{name} --{param.name}: {param.default!r} != {field.default!r}"
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_has_switches_full_defaults_and_an_example(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    options = result.output.split("Options:", 1)[1]
    assert "<bool>" not in options and "..." not in options and "\u2026" not in options
    example = result.output.split("Example:", 1)[1].split("\n\n")[1].strip()
    assert example.startswith(f"commfor-fast {name} ")
    for param in _commands()[name].params:
        if isinstance(param, click.Option) and param.is_bool_flag:
            assert len(param.opts) == 1 and len(param.secondary_opts) == 1, param.name  # --x/--no-x
            assert f"{param.opts[0]} / {param.secondary_opts[0]}" in options


def test_train_help_shows_long_defaults_whole() -> None:
    result = runner.invoke(app, ["train", "--help"])
    flat = "".join(result.output.split())
    assert "--use-amp/--no-use-amp" in flat and "--validate/--no-validate" in flat
    assert ",".join(DEFAULT_OPS) in flat  # the whole default list, nothing cut


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_switches_fill_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[TrainSettings] = []
    monkeypatch.setattr(commfor_fast.train, "train", seen.append)
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--use-amp",
                                 "--no-validate", "--no-lr-schedule", "--allow-changed-settings",
                                 "--hf-model", "some/model"])
    assert result.exit_code == 0, result.output
    (got,) = seen
    changed = {"data": tmp_path, "out": tmp_path / "run", "use_amp": True, "validate": False,
               "no_lr_schedule": True, "allow_changed_settings": True, "hf_model": "some/model"}
    for field in dataclasses.fields(TrainSettings):
        if field.name != "command":
            assert getattr(got, field.name) == changed.get(field.name, field.default), field.name
    # a switch takes no value: `--use-amp true` is refused by name
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path), "--use-amp", "true"])
    assert result.exit_code == 2 and "true" in result.output
