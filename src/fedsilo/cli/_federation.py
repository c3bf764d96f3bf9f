"""``fedsilo validate`` and ``fedsilo provision``: check a federation spec, make its kits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedsilo.config import ORCHESTRATOR_NAME, Role, load_federation, provision


def validate(
    federation: Annotated[Path, typer.Argument(help="The federation spec (YAML).")],
) -> None:
    """Check a federation spec; print what is wrong with it, with the file, field and line."""
    spec = load_federation(federation)
    count = len(spec.silos)
    typer.echo(f"ok: federation '{spec.name}', {count} silo{'' if count == 1 else 's'}")


def provision_command(
    federation: Annotated[Path, typer.Argument(help="The federation spec (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The workspace folder to create.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace the CA and kits of an existing workspace."),
    ] = False,
) -> None:
    """Create the federation CA and one kit per participant in a new workspace."""
    workspace = provision(federation, out, force=force)
    spec = workspace.federation
    table = Table(title=f"kits of federation '{spec.name}' in {workspace.root}")
    table.add_column("participant")
    table.add_column("role")
    table.add_column("kit")
    rows = [(ORCHESTRATOR_NAME, Role.ORCHESTRATOR)]
    rows += [(name, Role.SILO) for name in workspace.silo_names]
    rows += [(name, Role.SUBMITTER) for name in spec.submitters]
    for name, role in rows:
        table.add_row(name, role.value, str(workspace.kit_dir(name)))
    console = Console()
    console.print(table)
    console.print(
        f"Give each kit only to its participant; the CA key stays in {workspace.root / 'ca'}.",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``validate`` and ``provision`` to the root app."""
    app.command("validate")(validate)
    app.command("provision")(provision_command)
