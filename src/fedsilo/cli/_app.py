"""The root Typer application; each command group lives in its own module."""

from __future__ import annotations

import sys
from typing import Any

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


def _flags_without_type() -> None:
    """Help shows no ``<bool>`` beside a flag: a flag takes no value to describe.

    Typer prints every option's type in its help panels; for ``--wait`` that reads as if a
    value were expected. Options that take a value keep theirs.
    """
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_fedsilo", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return shown(self, ctx)

    display_type_rich._fedsilo = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fedsilo {version('fedsilo')}")
        raise typer.Exit()


@app.callback()
def _root(
    _show_version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print fedsilo's version and exit.",
    ),
) -> None:
    """Cross-silo federated learning: silos, an orchestrator, approved jobs."""


def _register() -> None:
    from fedsilo.cli import (
        _approval,
        _audit,
        _certs,
        _data,
        _enroll,
        _examples,
        _federation,
        _jobs,
        _keys,
        _learn,
        _members,
        _quickstart,
        _runtime,
        _service,
        _tracking,
    )

    for module in (_federation, _data, _runtime, _jobs, _keys, _quickstart, _approval, _audit):
        module.register(app)
    for module in (_learn, _tracking, _service, _members):
        module.register(app)
    _examples.register(app)
    _enroll.register(app)
    _certs.register(app)


def main() -> None:
    """Entry point of the ``fedsilo`` console script.

    Typer handles usage errors and exit codes; a :class:`FedsiloError` becomes one line
    on stderr (its text printed as is, never as markup) and exit status 1, as does a module
    that this machine's install left out (naming the extra that brings it).
    """
    _register()
    _flags_without_type()
    try:
        app()
    except FedsiloError as exc:
        _fail(exc)
    except ModuleNotFoundError as exc:
        from fedsilo._extras import missing_extra

        error = missing_extra(exc)
        if error is None:
            raise
        _fail(error)


def _fail(exc: FedsiloError) -> None:
    _err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
    sys.exit(1)
