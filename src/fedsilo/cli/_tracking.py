"""``fedsilo tracking ui | runs``: the workspace's MLflow tracking store."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedsilo.cli._common import WorkspaceArgument, console

tracking_app = typer.Typer(
    name="tracking", help="Experiment tracking of FL jobs (MLflow).", no_args_is_help=True
)


def ui(
    workspace: WorkspaceArgument = Path("."),
    port: Annotated[int, typer.Option("--port", "-p", help="The port to serve on.")] = 5000,
    host: Annotated[
        str,
        typer.Option("--host", help="The interface to bind (loopback unless you mean otherwise)."),
    ] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI over the workspace's tracking store until interrupted."""
    from fedsilo.tracking import ui_command

    command = ui_command(workspace, host=host, port=port)
    console.print(f"MLflow UI for {workspace}: [bold]{command.url}[/] (Ctrl-C stops it)")
    process = subprocess.Popen(command.argv, env=command.env)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        code = process.wait()
    if code not in (0, -2, -15):
        raise typer.Exit(code)


def runs(
    workspace: WorkspaceArgument = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The FL jobs tracked in the workspace, newest first, with their final metrics."""
    from fedsilo.tracking import Tracker, workspace_store

    _, db, _ = workspace_store(workspace)
    jobs = Tracker.for_workspace(workspace).jobs() if db.exists() else []
    if as_json:
        typer.echo(json.dumps([j.as_dict() for j in jobs], indent=2))
        return
    if not jobs:
        console.print(f"no tracked jobs in {workspace}")
        return
    metrics = sorted({k for j in jobs for k in j.final} - {"num_samples"})
    table = Table(title="tracked jobs")
    for column in ("job", "name", "status", "started", "rounds", *metrics):
        table.add_column(column, overflow="fold")
    for j in jobs:
        started = datetime.fromtimestamp(j.started).strftime("%Y-%m-%d %H:%M:%S")
        values = [f"{j.final[m]:.4f}" if m in j.final else "-" for m in metrics]
        table.add_row(j.job_id, j.job_name, j.status, started, str(j.rounds), *values)
    console.print(table)


tracking_app.command("ui")(ui)
tracking_app.command("runs")(runs)


def register(app: typer.Typer) -> None:
    """Add the ``tracking`` command group to the root app."""
    app.add_typer(tracking_app)
