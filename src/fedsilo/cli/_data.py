"""``fedsilo data``: register data in a silo's catalog, list it (never its contents), and
split a dataset into per-silo shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsilo.cli import _tables as tables
from fedsilo.cli._common import SiloKitOption, SiloOption, WorkspaceOption, silo_kit
from fedsilo.config import Classification
from fedsilo.storage import add_dataset, open_catalog

data_app = typer.Typer(
    name="data",
    help="Register data in a silo's catalog, list it, split a dataset into per-silo shards.",
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
    wide: tables.WideFlag = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List a silo's datasets: name, classification, kind, size and digest (its first 12
    digits; --wide or --json prints it whole)."""
    kit_of_silo = silo_kit(silo, workspace, kit)
    with open_catalog(kit_of_silo) as catalog:
        records = catalog.list()
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = tables.table(
        f"datasets of silo '{kit_of_silo.name}'", "name", "classification", "kind", "size", "sha256"
    )
    for record in records:
        table.add_row(
            record.name,
            record.classification.value,
            record.kind,
            _size(record.size_bytes),
            tables.short(record.sha256, wide),
        )
    Console().print(table)


SchemeOption = Annotated[
    str | None,
    typer.Option("--scheme", help="How rows are dealt: iid, dirichlet (label skew), column, time."),
]
AlphaOption = Annotated[
    float | None, typer.Option("--alpha", help="Dirichlet concentration (smaller: more skew).")
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="The seed of every random draw.")]
ColumnOption = Annotated[
    str | None, typer.Option("--column", help="The column for the column and time schemes.")
]
EdgesOption = Annotated[
    str | None, typer.Option("--edges", help="E1,E2,...: band or period boundaries (k-1 of them).")
]
LimitOption = Annotated[
    list[str] | None,
    typer.Option("--limit", help="ROLE=ROWS: use at most ROWS rows of a part (repeatable)."),
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data", envvar="FEDSILO_DATA", help="The folder of public datasets ($FEDSILO_DATA)."
    ),
]


def split(
    source: Annotated[
        str,
        typer.Argument(
            help="A dataset (creditcard, fashion-mnist, pneumoniamnist, wnut16), or a .npz "
            "or token<TAB>tag .txt file."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder for the shards.")],
    silos: Annotated[int, typer.Option("--silos", min=1, help="How many silos.")] = 3,
    names: Annotated[
        str | None, typer.Option("--names", help="A,B,...: the silos' names (default silo-1...).")
    ] = None,
    scheme: SchemeOption = "iid",
    alpha: AlphaOption = None,
    seed: SeedOption = None,
    column: ColumnOption = None,
    edges: EdgesOption = None,
    limit: LimitOption = None,
    test_fraction: Annotated[
        float | None,
        typer.Option("--test-fraction", help="Hold out this share of each silo's rows as test."),
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="The label array of a .npz file (default y).")
    ] = None,
    data: DataOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Deal a dataset's rows to silos and write OUT/SILO/PART files and OUT/split.json."""
    from fedsilo.datasets import MANIFEST, load_dataset, parse_plan, write_shards
    from fedsilo.datasets import split as split_rows

    silo_names = names.split(",") if names else [f"silo-{i}" for i in range(1, silos + 1)]
    plan = parse_plan(
        scheme=scheme,
        seed=seed,
        alpha=alpha,
        column=column,
        edges=edges,
        limits=limit or (),
        test_fraction=test_fraction,
    )
    shards = split_rows(load_dataset(source, data, label=label), silo_names, plan)
    paths = write_shards(shards, out, source=source)
    manifest = json.loads((out / MANIFEST).read_text())
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    roles = list(next(iter(paths.values())))
    table = tables.table(
        f"{source} split {plan.scheme.value} over {len(silo_names)} silos",
        "silo",
        *(f"{r} rows" for r in roles),
        "folder",
        wrap=("folder",),
    )
    for counted in table.columns[1:-1]:
        counted.justify = "right"
    for silo, files in paths.items():
        table.add_row(
            silo, *(str(shards.rows(silo, r)) for r in roles), str(files[roles[0]].parent)
        )
    Console().print(table)
    typer.echo(f"wrote {out / MANIFEST}")


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
data_app.command("split")(split)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the root app."""
    app.add_typer(data_app, name="data")
