"""The root Typer application; each command group lives in its own module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from fedsilo.errors import FedsiloError

app = typer.Typer(
    name="fedsilo",
    help="Cross-silo federated learning: silos, an orchestrator, approved jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_err = Console(stderr=True)


def _register() -> None:
    from fedsilo.cli import (
        _approval,
        _audit,
        _data,
        _examples,
        _federation,
        _jobs,
        _keys,
        _learn,
        _quickstart,
        _runtime,
        _tracking,
    )

    for module in (_federation, _data, _runtime, _jobs, _keys, _quickstart, _approval, _audit):
        module.register(app)
    for module in (_learn, _tracking):
        module.register(app)
    _examples.register(app)


def main() -> None:
    """Entry point of the ``fedsilo`` console script.

    Typer handles usage errors and exit codes; a :class:`FedsiloError` becomes one line
    on stderr (its text printed as is, never as markup) and exit status 1.
    """
    _register()
    try:
        app()
    except FedsiloError as exc:
        _err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(1)
