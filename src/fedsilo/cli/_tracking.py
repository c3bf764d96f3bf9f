"""``fedsilo tracking ui | runs | export``: the MLflow tracking store, and one person's share."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fedsilo.cli import _hints as hints
from fedsilo.cli import _tables as tables
from fedsilo.cli._common import WorkspaceArgument, console

if TYPE_CHECKING:
    from fedsilo.tracking import TrackedJob

tracking_app = typer.Typer(
    name="tracking", help="Experiment tracking of FL jobs (MLflow).", no_args_is_help=True
)

StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="A folder holding a tracking store (mlflow.db) instead of WORKSPACE's: an "
        "export, or the orchestrator's STORAGE/tracking.",
        show_default=False,
    ),
]


def _store_folder(ctx: typer.Context, workspace: Path, store: Path | None) -> Path:
    """The folder of the store a command reads: ``--store``, else the workspace's."""
    from fedsilo.tracking import workspace_store

    if store is None:
        return workspace_store(workspace)[1].parent
    given = ctx.get_parameter_source("workspace")  # not $FEDSILO_WORKSPACE, not the default
    if given is not None and given.name == "COMMANDLINE":
        raise typer.BadParameter("give a WORKSPACE or --store, not both", param_hint="'--store'")
    return store.absolute()


def ui(
    ctx: typer.Context,
    workspace: WorkspaceArgument = Path("."),
    store: StoreOption = None,
    port: Annotated[int, typer.Option("--port", "-p", help="The port to serve on.")] = 5000,
    host: Annotated[
        str,
        typer.Option("--host", help="The interface to bind (loopback unless you mean otherwise)."),
    ] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI over the workspace's tracking store (or --store's) until interrupted."""
    from fedsilo.tracking import ui_command

    if store is not None:
        command = ui_command(store=_store_folder(ctx, workspace, store), host=host, port=port)
    else:
        command = ui_command(workspace, host=host, port=port)
    shown = store if store is not None else workspace
    console.print(f"MLflow UI for {shown}: [bold]{command.url}[/] (Ctrl-C stops it)")
    if not command.training_view:
        console.print(
            "note: this install of fedsilo registers no MLflow app (reinstall it: pip install "
            "-e .), so the UI opens in MLflow's GenAI view: pick 'Model training' at its top"
        )
    process = subprocess.Popen(command.argv, env=command.env)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        code = process.wait()
    if code not in (0, -2, -15):
        raise typer.Exit(code)


def runs(
    ctx: typer.Context,
    workspace: WorkspaceArgument = Path("."),
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The FL jobs tracked in the workspace (or --store), newest first, with final metrics."""
    from fedsilo.tracking import Tracker, store_in

    folder = _store_folder(ctx, workspace, store)
    uri, db, artifacts = store_in(folder)
    jobs = Tracker.for_uri(uri, artifacts).jobs() if db.is_file() else []
    if as_json:
        typer.echo(json.dumps([j.as_dict() for j in jobs], indent=2))
        return
    if not jobs:
        console.print(f"no tracked jobs in {store if store is not None else workspace}")
        return
    console.print(_runs_table(jobs))


def _runs_table(jobs: list[TrackedJob]) -> Table:
    """One tracked job a row, with the final metrics it logged (wrapped to fit)."""
    shown = tables.table(
        "tracked jobs", "job", "status", "started", "final metrics", wrap=("status", "started")
    )
    shown.columns[-1].overflow = "fold"
    shown.columns[-1].no_wrap = False
    shown.columns[-1].min_width = len("accuracy=0.9999,")
    for j in jobs:
        started = datetime.fromtimestamp(j.started).strftime("%Y-%m-%d %H:%M")
        final = ", ".join(f"{m}={j.final[m]:.4f}" for m in sorted(j.final) if m != "num_samples")
        status = f"{j.status.lower()}, {j.rounds} rounds"
        shown.add_row(j.job_id, status, started, final or "none logged")
    return shown


def export(
    ctx: typer.Context,
    reader: Annotated[
        str,
        typer.Option(
            "--for",
            help="The submitter whose share to export: its own jobs, and those shared with it.",
            show_default=False,
        ),
    ],
    to: Annotated[
        Path,
        typer.Option(
            "--to",
            help="The export's folder: new, empty, or this submitter's earlier export.",
            show_default=False,
        ),
    ],
    workspace: WorkspaceArgument = Path("."),
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Copy the runs one submitter may read into an MLflow store of its own, to serve to it.

    Exporting again into the same folder adds new runs and completes running ones.
    """
    from fedsilo.tracking import Tracker, TrackingError, export_runs, store_in

    folder = _store_folder(ctx, workspace, store)
    uri, db, artifacts = store_in(folder)
    if not db.is_file():
        raise TrackingError(f"{folder} holds no tracking store (no {db.name}); nothing to export")
    result = export_runs(Tracker.for_uri(uri, artifacts), reader, to)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    console.print(
        f"the runs '{reader}' may read, in {result.folder}: jobs {len(result.added)} added, "
        f"{len(result.updated)} updated, {len(result.unchanged)} unchanged",
        highlight=False,
    )
    console.print(
        f"serve them to '{reader}' alone with: {hints.tracking_ui(store=to)}",
        highlight=False,
        soft_wrap=True,
    )


tracking_app.command("ui")(ui)
tracking_app.command("runs")(runs)
tracking_app.command("export")(export)


def register(app: typer.Typer) -> None:
    """Add the ``tracking`` command group to the root app."""
    app.add_typer(tracking_app)
