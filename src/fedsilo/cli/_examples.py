"""``fedsilo example NAME prepare WORKSPACE``: connect an example's data to every silo."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from fedsilo.cli._common import WorkspaceArgument, console
from fedsilo.cli._data import (
    AlphaOption,
    ColumnOption,
    DataOption,
    EdgesOption,
    LimitOption,
    SchemeOption,
    SeedOption,
)


class ExampleAction(StrEnum):
    """What ``fedsilo example NAME ...`` does."""

    PREPARE = "prepare"


def example(
    name: Annotated[
        str,
        typer.Argument(
            help="The example, as in examples/NAME: helloworld, fashion-mnist, pneumonia, "
            "ccfraud, ner.",
            show_default=False,
        ),
    ],
    action: Annotated[
        ExampleAction, typer.Argument(help="prepare: split its data into the silos.")
    ],
    workspace: WorkspaceArgument,
    silos: Annotated[
        str | None,
        typer.Option("--silos", help="A,B,...: only these silos (default: all of the workspace)."),
    ] = None,
    scheme: SchemeOption = None,
    alpha: AlphaOption = None,
    seed: SeedOption = None,
    column: ColumnOption = None,
    edges: EdgesOption = None,
    limit: LimitOption = None,
    data: DataOption = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the example's datasets if registered.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Split an example's data across a workspace's silos, as each silo's sensitive data.

    Each silo's share of each part (train, test) is registered in that silo's own
    catalog as sensitive, under the names the example's job files read. Options left out
    keep the example's own split (see its README).
    """
    from fedsilo.datasets import example_data, parse_plan, prepare_example

    plan = parse_plan(
        example_data(name).plan,
        scheme=scheme,
        seed=seed,
        alpha=alpha,
        column=column,
        edges=edges,
        limits=limit or (),
    )
    prepared = prepare_example(
        workspace,
        name,
        silos=silos.split(",") if silos else None,
        plan=plan,
        data_root=data,
        replace_existing=replace,
    )
    if as_json:
        typer.echo(json.dumps(prepared.as_dict(), indent=2))
        return
    split = prepared.manifest
    settings = ", ".join(f"{k} {v}" for k, v in split.items() if k not in ("silos", "source"))
    table = Table(title=f"{name}: {split['source']} split {settings}")
    table.add_column("silo")
    table.add_column("dataset")
    table.add_column("classification")
    table.add_column("rows", justify="right")
    table.add_column("labels")
    for silo, roles in prepared.records.items():
        for role, record in roles.items():
            part = split["silos"][silo][role]
            labels = " ".join(f"{k}:{v}" for k, v in part["labels"].items())
            table.add_row(silo, record.name, record.classification.value, str(part["rows"]), labels)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``example`` to the root app."""
    app.command()(example)
