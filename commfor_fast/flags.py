"""How the command line reads its flags: the original's spellings, its retired flags, one-line errors.

Users of the original `train.py` / `eval.py` type `--batch_size`; every flag here is
spelled with dashes, so any `--x_y` that names one of a command's flags once its
underscores are dashes is read as that flag (one rule for all flags, no alias list).
A flag of the original with no counterpart in the command is answered from
`RETIRED`, the one table of what to run instead (the README's "The original's flags"
repeats its rows word for word; a test holds them equal). Every usage error, click's
included, is one `error: ...` line with exit code 2, like the library's errors.

`FlagsCommand` and `FlagsGroup` are the typer classes that apply this; `command`
registers a function with them and names each option's value in help (`PATH`,
`INTEGER`, `[dali|reference]`) from its type instead of typer's Python-type markers.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.26 carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # older typer runs on click itself
    from click.exceptions import UsageError

F = TypeVar("F", bound=Callable[..., Any])

# The original's flags that have no counterpart here (or only in another command), and
# what to run instead. One row per group of flags; the README's mapping table holds the
# same rows.
RETIRED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--gpus", "--gpus_list"),
     "one process per GPU: `torchrun --nproc_per_node=N -m commfor_fast train ...`; choose the GPUs with "
     "`CUDA_VISIBLE_DEVICES`"),
    (("--huggingface_train_repo", "--hf_split_train", "--huggingface_test_repo", "--hf_split_test"),
     "convert the dataset once, `commfor-fast convert --hf-repo REPO --hf-split SPLIT --out SHARDS`, then pass "
     "`--data SHARDS`"),
    (("--additional_train_data", "--additional_test_data"),
     "convert the folder once, `commfor-fast convert --folder ROOT --out SHARDS` (add `--hf-repo` to combine), "
     "then pass `--data SHARDS`"),
    (("--additional_data_label_format",), "`commfor-fast convert --labels real:0,fake:1`"),
    (("--dont_limit_real_data_to_fake",), "`commfor-fast convert --no-balance`"),
    (("--val_frac",), "`commfor-fast convert --val-frac F`: the validation split is made once, in the shards"),
    (("--cache_dir",), "`commfor-fast convert --cache-dir DIR`"),
    (("--test_frac",),
     "convert the test images apart, `commfor-fast convert --val-frac 0 --out TEST_SHARDS`, then "
     "`commfor-fast eval --data TEST_SHARDS`"),
    (("--save_path", "--ckpt_save_path"),
     "`commfor-fast train --out RUN_FOLDER` (checkpoints, `model.pt` and `final/` go there)"),
    (("--eval_only",), "`commfor-fast eval --data SHARDS --ckpt CKPT --out REPORT`"),
    (("--wandb_token", "--tokens_path"),
     "set `WANDB_API_KEY` in the environment (a key is never a flag) and pass `--wandb-project NAME`"),
    (("--dont_add_sigmoid",),
     "drop it: scores files (`eval --save-scores`, `predict --out`) hold both the logit and P(fake)"),
    (("--augment", "--num_ops", "--ops_magnitude"),
     "not carried over: RSA is the paper's augmentation; choose its ops with `--rsa-ops` (`singleJPEG` and "
     "`StochasticJPEG` are RSA ops here)"),
    (("--model_inner_dim",), "drop it: the head is `Linear(width, 1)`, its width set by `--model-size`"),
    (("--verbose",),
     "drop it: progress lines are always printed (`train --log-every N` sets how often; `convert --quiet` and "
     "`verify --quiet` silence them)"),
    (("--debug_port",), "drop it: run under debugpy, `python -m debugpy --listen PORT --wait-for-client -m "
                        "commfor_fast ...`"),
)


def dashed(flag: str) -> str:
    """`--batch_size` -> `--batch-size` (the spelling every flag here has)."""
    return "--" + flag[2:].replace("_", "-")


_ADVICE = {dashed(flag): advice for flags, advice in RETIRED for flag in flags}


class RetiredFlag(UsageError):
    """A flag of the original that is answered by what to run instead."""


def respell(args: Sequence[str], known: set[str]) -> list[str]:
    """`args` with each underscore spelling of a flag in `known` written with dashes.

    Raises `RetiredFlag` for a retired flag of the original that `known` lacks, with
    what to run instead. Other arguments (values, positionals, everything after `--`)
    are left as they are.
    """
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or name in known:
            out.append(arg)
        elif dashed(name) in known:
            out.append(dashed(name) + eq + value)
        elif dashed(name) in _ADVICE:
            raise RetiredFlag(f"{name} is a flag of the original's train.py / eval.py; here: {_ADVICE[dashed(name)]}")
        else:
            out.append(arg)
    return out


def _one_line(exc: UsageError, ctx: Any) -> NoReturn:
    """A usage error as one `error:` line on stderr and exit code 2 (click prints the usage
    and a hint on four lines); click's own errors point to the command's help."""
    where = "" if isinstance(exc, RetiredFlag) else f" (see `{ctx.command_path} --help`)"
    typer.echo(f"error: {exc.format_message().rstrip('.')}{where}", err=True)
    raise typer.Exit(2)


class FlagsCommand(TyperCommand):
    """A command that reads the original's underscore spellings, reports usage errors on one line
    and names option values by `metavars` (option name -> metavar; `command` fills it)."""

    metavars: dict[str, str] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "option" and param.metavar is None:
                param.metavar = self.metavars.get(param.name or "")

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        known = {opt for param in self.params for opt in (*param.opts, *param.secondary_opts)}
        try:
            return super().parse_args(ctx, respell(args, known))
        except UsageError as exc:
            _one_line(exc, ctx)


# `commfor-fast --help` lists the commands in the order of the work: try, prepare data, train, use.
WORKFLOW = ("demo", "convert", "inspect", "verify", "train", "eval", "predict", "push", "bench")


class FlagsGroup(TyperGroup):
    """The root command: sub-commands in workflow order, an unknown command or option on one line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = bool(args)  # (the parser empties `args`)
        try:
            return super().parse_args(ctx, args)
        except UsageError as exc:
            if not given:  # no_args_is_help: this error shows the help
                raise
            _one_line(exc, ctx)

    def list_commands(self, ctx: Any) -> list[str]:
        order = {name: i for i, name in enumerate(WORKFLOW)}
        return sorted(super().list_commands(ctx), key=lambda name: order.get(name, len(order)))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:
            _one_line(exc, ctx)


def metavar(annotation: Any) -> str | None:
    """How help names an option's value, from its type: PATH, INTEGER, FLOAT, TEXT, or the
    choices as [a|b]; None for a switch (no value)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "[" + "|".join(str(a) for a in args) + "]"
    if args and typing.get_origin(annotation) is not None:  # Optional[X], list[X]
        return metavar(args[0])
    names = {Path: "PATH", int: "INTEGER", float: "FLOAT", str: "TEXT"}
    return names.get(annotation)


def command(app: typer.Typer, name: str | None = None) -> Callable[[F], F]:
    """Register `fn` as a command of `app` read by a `FlagsCommand`, each option's value named by
    `metavar` from its type unless its declaration names it."""
    def register(fn: F) -> F:
        hints = typing.get_type_hints(fn, include_extras=True)
        names = {param: shown for param, hint in hints.items() if (shown := metavar(hint)) is not None}
        cls = type(f"{fn.__name__.title()}Command", (FlagsCommand,), {"metavars": names})
        return app.command(name, cls=cls)(fn)
    return register
