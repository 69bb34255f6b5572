"""The `commfor-fast` command line: a thin typer layer over the library.

Each command fills one settings dataclass and makes one library call; the library
never imports typer. `UserError` becomes one `error: ...` line and exit code 2.
Heavy modules (torch, DALI, datasets) are imported inside the commands so that
`--help` is instant.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import typer

from commfor_fast import __version__
from commfor_fast.errors import UserError

app = typer.Typer(
    name="commfor-fast",
    help="Community Forensics fake-image detectors: convert data to shards, train, evaluate, predict, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
T = TypeVar("T")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"commfor-fast {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Community Forensics, fed at GPU speed."""


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one library call; a `UserError` becomes `error: ...` on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    """Console-script entry point."""
    app()
