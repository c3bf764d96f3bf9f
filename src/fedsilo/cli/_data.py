"""``fedsilo data``: register data in a silo's catalog and list it (never its contents)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedsilo.cli._common import SiloKitOption, SiloOption, WorkspaceOption, silo_kit
from fedsilo.config import Classification
from fedsilo.storage import add_dataset, open_catalog

data_app = typer.Typer(
    name="data",
    help="Register data in a silo's catalog and list it.",
    no_args_is_help=True,
)


def add(
    path: Annotated[Path, typer.Argument(help="The file or folder to register.")],
    name: Annotated[str, typer.Option("--name", help="The dataset's name in the catalog.")],
    classification: Annotated[
        Classification,
        typer.Option("--classification", help="How far the data may travel."),
    ],
    silo: SiloOption = None,
    workspace: WorkspaceOption = Path("."),
    kit: SiloKitOption = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an existing dataset of that name.")
    ] = False,
) -> None:
    """Copy a file or folder into a silo's storage and record it with its classification."""
    kit_of_silo = silo_kit(silo, workspace, kit)
    record = add_dataset(kit_of_silo, name, path, classification, replace=replace)
    typer.echo(
        f"added '{record.name}' to silo '{kit_of_silo.name}' as {record.classification.value} "
        f"({record.kind}, {_size(record.size_bytes)}, sha256 {record.sha256})"
    )


def list_command(
    silo: SiloOption = None,
    workspace: WorkspaceOption = Path("."),
    kit: SiloKitOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List a silo's datasets: name, classification, kind, size and digest."""
    kit_of_silo = silo_kit(silo, workspace, kit)
    with open_catalog(kit_of_silo) as catalog:
        records = catalog.list()
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table(title=f"datasets of silo '{kit_of_silo.name}'")
    for column in ("name", "classification", "kind", "size", "sha256"):
        table.add_column(column, no_wrap=column != "sha256", overflow="fold")
    for record in records:
        table.add_row(
            record.name,
            record.classification.value,
            record.kind,
            _size(record.size_bytes),
            record.sha256,
        )
    Console().print(table)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


data_app.command("add")(add)
data_app.command("list")(list_command)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the root app."""
    app.add_typer(data_app, name="data")
