"""``fedsilo quickstart``: a real 3-silo federation on this machine, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedsilo.api import JobInfo
from fedsilo.cli._common import console, err_console
from fedsilo.cli._jobs import progress_bar


def quickstart(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Where to create the federation.")
    ] = Path("quickstart-workspace"),
    rounds: Annotated[int, typer.Option(min=1, help="FL rounds.")] = 5,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the federation up afterwards.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Provision 3 silos, give each a private share of the digits data, train, compare."""
    from fedsilo.quickstart import run_quickstart

    log = err_console if as_json else console
    with progress_bar() as bar:
        task = bar.add_task("FL rounds", total=rounds, detail="", visible=False)

        def on_stage(message: str) -> None:
            bar.console.print(f"[dim]·[/] {message}") if not as_json else None

        def on_update(info: JobInfo) -> None:
            done = sum(1 for r in info.history if r.round >= 1 and r.evaluate)
            acc = info.history[-1].evaluate_aggregate.get("accuracy") if info.history else None
            detail = f"accuracy {acc:.3f}" if acc is not None else (info.detail or "")
            bar.update(task, completed=done, detail=detail, visible=not as_json)

        result = run_quickstart(
            workspace,
            rounds=rounds,
            keep_running=keep_running,
            on_stage=on_stage,
            on_update=on_update,
        )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(title="digits: federated vs centralized (accuracy on the silos' test data)")
    table.add_column("model")
    table.add_column("trained on")
    table.add_column("accuracy", justify="right")
    table.add_row(
        "FL (FedAvg)",
        f"3 silos, data never left them, {result.rounds} rounds",
        f"{result.fl_accuracy:.4f}",
    )
    table.add_row(
        "Central-all",
        "all data pooled (not possible across real silos)",
        f"{result.central_accuracy:.4f}",
    )
    table.add_row("Central-1/3", "silo-a's data alone", f"{result.single_silo_accuracy:.4f}")
    log.print(table)
    log.print(
        f"done in {result.seconds:.1f} s (the FL job took {result.fl_seconds:.1f} s). "
        f"The workspace is {result.workspace}; the job spec to submit again is "
        f"{result.workspace}/job/job.yaml and the model {result.workspace}/model.safetensors. "
        f"Job code ran with sandbox: {result.sandbox}."
    )
    log.print(
        f"The job's rounds, parameters and model are in MLflow: fedsilo tracking ui "
        f"{result.workspace} (then open http://127.0.0.1:5000)."
    )


def register(app: typer.Typer) -> None:
    """Add ``quickstart`` to the root app."""
    app.command()(quickstart)
