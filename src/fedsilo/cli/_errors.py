"""``fedsilo silo errors``: the errors a silo keeps, read on the silo's own kit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fedsilo.cli import _hints as hints
from fedsilo.cli import _tables as tables
from fedsilo.cli._common import SiloKitOption, SiloOption, WorkspaceOption, console, silo_kit

__all__ = ["errors"]


def errors(
    error_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID",
            help="An error id (e-3fa9c2d41b07): print the whole error.",
            show_default=False,
        ),
    ] = None,
    silo: SiloOption = None,
    workspace: WorkspaceOption = Path("."),
    kit: SiloKitOption = None,
    last: Annotated[int, typer.Option("--last", min=1, help="How many errors to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the errors a silo kept of failed steps, or print one whole by its ID.

    A failed step's message, traceback and output stay in the silo; the orchestrator and
    the submitter get the error id only. Run on the silo's machine, with its kit (--kit)
    or the workspace (-w WORKSPACE --silo NAME).
    """
    from fedsilo.silo._errors import ErrorStore

    loaded = silo_kit(silo, workspace, kit)
    store = ErrorStore(loaded.storage_path, loaded.name)
    if error_id is not None:
        kept = store.get(error_id)
        if as_json:
            typer.echo(kept.model_dump_json(indent=2))
        else:
            typer.echo(kept.text(), nl=False)
        return
    recent = store.recent(last)
    if as_json:
        typer.echo(json.dumps([e.model_dump(mode="json") for e in recent], indent=2))
        return
    if not recent:
        console.print(f"silo '{loaded.name}' keeps no errors")
        return
    table = tables.table(
        f"errors kept by silo '{loaded.name}' (the newest first)",
        "error",
        "time",
        "job",
        "step",
        "class",
        wrap=("step", "class"),
    )
    for e in recent:
        job = e.job_id or "no job"
        table.add_row(
            e.id,
            _when(e.time),
            Text(job),
            Text(e.step),
            Text(e.error_class),
        )
    console.print(table)
    console.print(
        "print the newest whole with: "
        + hints.silo_errors(recent[0].id, loaded.name, workspace, kit),
        highlight=False,
        soft_wrap=True,
    )


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
