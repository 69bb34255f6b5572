"""The command line's help and defaults: one source of truth (the settings dataclasses),
booleans as --flag/--no-flag, full defaults, an example per command, shell completion;
the original's flag spellings, its retired flags, choices checked at parse time."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import click
import pytest
from PIL import Image
import typer
from typer.testing import CliRunner

import commfor_fast.train
from commfor_fast.cli import app
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.flags import RETIRED, RetiredFlag, respell
from commfor_fast.pipelines.ops import DEFAULT_OPS
from commfor_fast.settings import AMP_SPELLINGS, AmpDtype, BenchSettings, CheckMode, DemoSettings, EvalSettings, \
    Loader, LRScheduleKind, ModelSize, PredictSettings, ScoresFormat, TrainSettings

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
        if param.param_type_name == "option" and param.is_bool_flag:
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


# ------------------------------------------------ the original's flags (issue 24, item 1)


def _options(command: click.Command) -> list[str]:
    return [opt for p in command.params if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)]


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_flag_of_every_command_reads_its_underscore_spelling(name: str) -> None:
    options = _options(_commands()[name])
    for opt in options:
        underscored = "--" + opt[2:].replace("-", "_")
        assert respell([underscored, "x_y", f"{underscored}=a_b"], set(options)) == [opt, "x_y", f"{opt}=a_b"]


def test_the_original_spellings_fill_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[TrainSettings] = []
    monkeypatch.setattr(commfor_fast.train, "train", seen.append)
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                 "--batch_size", "7", "--hf_model_repo", "OwensLab/commfor-model-384",
                                 "--cpus-per-gpu", "3", "--use_amp", "--amp_dtype", "bfloat16", "--no_lr_schedule",
                                 "--warmup_frac=0.2", "--rsa_max_num_ops", "1"])
    assert result.exit_code == 0, result.output
    (got,) = seen
    assert (got.batch_size, got.hf_model, got.num_threads, got.use_amp, got.amp_dtype, got.no_lr_schedule,
            got.warmup_frac, got.rsa_max_num_ops) == (7, "OwensLab/commfor-model-384", 3, True, "bf16", True, 0.2, "1")


def _one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


RETIRED_FLAGS = [(flag, advice) for flags, advice in RETIRED for flag in flags]


@pytest.mark.parametrize("flag, advice", RETIRED_FLAGS)
def test_each_retired_flag_says_what_to_run_instead(tmp_path: Path, flag: str, advice: str) -> None:
    for command in ("train", "eval"):
        line = _one_error_line(runner.invoke(app, [command, "--data", str(tmp_path), "--out", str(tmp_path),
                                                   flag, "1"]))
        assert line == f"error: {flag} is a flag of the original's train.py / eval.py; here: {advice}"


# The flags of the original's train.py and eval.py (one parser), from its README.
ORIGINAL_FLAGS = (
    "--gpus --gpus_list --cpus-per-gpu --epochs --train_itrs --batch_size --lr --weight_decay --warmup_epochs "
    "--warmup_frac --no_lr_schedule --val_frac --test_frac --augment --num_ops --ops_magnitude --rsa_ops "
    "--rsa_min_num_ops --rsa_max_num_ops --eval_only --model_inner_dim --model_size --input_size --patch_size "
    "--pretrained_path --freeze_backbone --dont_add_sigmoid --use_amp --amp_dtype --save_path --ckpt_save_path "
    "--ckpt_path --ckpt_keep_count --only_load_model_weights --tokens_path --wandb_token --cache_dir "
    "--dont_limit_real_data_to_fake --huggingface_train_repo --huggingface_test_repo --hf_split_train "
    "--hf_split_test --hf_model_repo --additional_train_data --additional_test_data "
    "--additional_data_label_format --verbose --seed --debug_port"
).split()
# The flags of the original README's evaluation scripts.
ORIGINAL_EVAL_FLAGS = ("--gpus --cpus-per-gpu --batch_size --hf_model_repo --ckpt_path --huggingface_test_repo "
                       "--hf_split_test --additional_test_data --additional_data_label_format --verbose").split()


@pytest.mark.parametrize("name, flags", [("train", ORIGINAL_FLAGS), ("eval", ORIGINAL_EVAL_FLAGS)])
def test_every_flag_of_the_original_is_read_or_answered(name: str, flags: list[str]) -> None:
    known = set(_options(_commands()[name]))
    for flag in flags:
        try:
            (spelled,) = respell([flag], known)
        except RetiredFlag:
            continue
        assert spelled in known, flag


def test_a_flag_retired_in_train_is_read_where_it_lives() -> None:
    convert = _options(_commands()["convert"])
    assert respell(["--val_frac", "0.1", "--cache_dir", "c"], set(convert)) == ["--val-frac", "0.1", "--cache-dir", "c"]
    with pytest.raises(RetiredFlag, match="commfor-fast convert --val-frac"):
        respell(["--val_frac", "0.1"], set(_options(_commands()["train"])))


def test_the_readme_mapping_table_holds_the_retired_rows() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## The original's flags", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    for flags, advice in RETIRED:
        assert rows.get(", ".join(f"`{flag}`" for flag in flags)) == advice, flags


# ---------------------------------------------------- choices at parse time (issue 24, item 8)

CHOICES = {"--loader": ("train", get_args(Loader)), "--model-size": ("train", get_args(ModelSize)),
           "--lr-schedule": ("train", get_args(LRScheduleKind)), "--amp-dtype": ("eval", get_args(AmpDtype)),
           "--scores-format": ("eval", get_args(ScoresFormat)), "--check": ("convert", get_args(CheckMode))}


def test_the_choices_are_the_library_ones() -> None:
    from commfor_fast.convert.settings import CHECK_MODES
    from commfor_fast.distributed import AMP_DTYPES
    from commfor_fast.evaluate import SCORE_FORMATS
    from commfor_fast.model import allowed_configs
    from commfor_fast.pipelines.loader import LOADERS
    from commfor_fast.schedule import LR_SCHEDULES

    assert get_args(Loader) == LOADERS and get_args(LRScheduleKind) == LR_SCHEDULES
    assert get_args(ScoresFormat) == SCORE_FORMATS and get_args(CheckMode) == CHECK_MODES
    assert {AMP_SPELLINGS.get(name, name) for name in get_args(AmpDtype)} == set(AMP_DTYPES)
    assert {config.split("/")[0] for config in allowed_configs().split(", ")} == set(get_args(ModelSize))


@pytest.mark.parametrize("flag", sorted(CHOICES))
def test_choices_are_listed_in_help_and_completion(flag: str) -> None:
    name, choices = CHOICES[flag]
    assert f"{flag} [{'|'.join(choices)}]" in runner.invoke(app, [name, "--help"]).output
    command = _commands()[name]
    (param,) = [p for p in command.params if flag in p.opts]
    with command.make_context(name, ["--help"], resilient_parsing=True) as ctx:
        offered = [item.value for item in param.shell_complete(ctx, "")]
    assert offered == list(choices)


def test_a_bad_choice_fails_at_parse_time_before_torch_and_dali(tmp_path: Path) -> None:
    script = f"""
import sys
from typer.testing import CliRunner
from commfor_fast.cli import app
before = set(sys.modules)
codes = [CliRunner().invoke(app, args).exit_code for args in (
    ["train", "--data", {str(tmp_path)!r}, "--out", {str(tmp_path)!r}, "--loader", "pil"],
    ["train", "--data", {str(tmp_path)!r}, "--out", {str(tmp_path)!r}, "--amp-dtype", "half"],
    ["eval", "--data", {str(tmp_path)!r}, "--out", {str(tmp_path)!r}, "--ckpt", "m.pt", "--scores-format", "xls"],
    ["demo", "--model-size", "base"],
)]
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] == "torch" or m.startswith("nvidia.dali"))
print(codes, heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.stdout.strip() == "[2, 2, 2, 2] []", done.stdout + done.stderr


def test_a_bad_choice_is_one_line_naming_the_flag_and_the_choices(tmp_path: Path) -> None:
    line = _one_error_line(runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path),
                                               "--loader", "pil"]))
    assert "'--loader'" in line and "'pil' is not one of 'dali', 'reference'" in line and "train --help" in line


@pytest.mark.parametrize("spelling, canonical", [("bfloat16", "bf16"), ("float16", "fp16"), ("bf16", "bf16")])
def test_amp_dtype_reads_torch_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spelling: str,
                                     canonical: str) -> None:
    seen: list[TrainSettings] = []
    monkeypatch.setattr(commfor_fast.train, "train", seen.append)
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path), "--amp-dtype", spelling])
    assert result.exit_code == 0, result.output
    assert seen[0].amp_dtype == canonical


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_no_model_given_is_said_plainly(command: str, converted: Path, tmp_path: Path) -> None:
    """Said by the library once the inputs are known good (the CLI adds no check of its own)."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(photo)
    args = ["eval", "--data", str(converted), "--out", str(tmp_path / "o")] if command == "eval" else ["predict", str(photo)]
    line = _one_error_line(runner.invoke(app, args))
    assert line.startswith("error: no model given: pass --ckpt FILE") and "None" not in line


@pytest.mark.parametrize("name", sorted(_commands()))
def test_metavars_are_not_python_types(name: str) -> None:
    flat = " ".join(runner.invoke(app, [name, "--help"]).output.split())
    for param in _commands()[name].params:
        if param.param_type_name == "option" and not param.is_flag:
            assert param.metavar in ("PATH", "INTEGER", "FLOAT", "TEXT", "FAMILY=LEVELS", "NAME=VALUE") or \
                param.metavar.startswith("["), (param.name, param.metavar)
            assert f"{param.opts[-1]} {param.metavar}" in flat


def test_commands_are_listed_in_workflow_order() -> None:
    listing = runner.invoke(app, ["--help"]).output.split("Commands:", 1)[1]
    names = [line.split()[0] for line in listing.splitlines() if line.startswith("  ")]
    assert names == ["demo", "convert", "inspect", "verify", "train", "eval", "predict", "push", "bench"]


def test_unknown_commands_and_options_are_one_line() -> None:
    assert "Did you mean 'train'?" in _one_error_line(runner.invoke(app, ["trian"]))
    assert "No such option: --batchsize" in _one_error_line(runner.invoke(app, ["train", "--batchsize", "3"]))
    assert "No such option: --bogus" in _one_error_line(runner.invoke(app, ["--bogus"]))
    assert "Commands:" in runner.invoke(app, []).output  # no arguments: the help, as before
