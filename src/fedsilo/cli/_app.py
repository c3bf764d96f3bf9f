"""The root Typer application; each command group lives in its own module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

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
    from fedsilo.cli import _data, _federation, _jobs, _quickstart, _runtime

    for module in (_federation, _data, _runtime, _jobs, _quickstart):
        module.register(app)


def main() -> None:
    """Entry point of the ``fedsilo`` console script."""
    _register()
    try:
        app(standalone_mode=False)
    except FedsiloError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
