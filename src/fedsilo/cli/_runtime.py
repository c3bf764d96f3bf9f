"""``fedsilo up | down | status | check`` and the per-process ``orchestrator`` / ``silo``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedsilo.api import OrchestratorClient
from fedsilo.cli._common import KitOption, WorkspaceArgument, console, submitter_kit
from fedsilo.errors import OrchestratorUnavailable

orchestrator_app = typer.Typer(
    name="orchestrator", help="Run the orchestrator.", no_args_is_help=True
)
silo_app = typer.Typer(name="silo", help="Run a silo's agent.", no_args_is_help=True)

KitDir = Annotated[Path, typer.Option("--kit", help="The participant's kit folder.")]


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def up(
    workspace: WorkspaceArgument = Path("."),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every silo.")] = 60.0,
) -> None:
    """Start the orchestrator and, per silo, its agent and approval endpoint: each a process."""
    from fedsilo.runtime import up as start

    report = start(workspace, timeout=timeout)
    console.print(
        f"federation '{report.federation}' is up: orchestrator and "
        f"{len(report.silos)} silo agents online (logs in {workspace / 'logs'})"
    )


def down(workspace: WorkspaceArgument = Path(".")) -> None:
    """Stop every process `fedsilo up` started in the workspace."""
    from fedsilo.runtime import down as stop

    stopped = stop(workspace)
    if stopped:
        console.print(f"stopped {', '.join(p.name for p in stopped)}")
    else:
        console.print("nothing was running")


def status(
    workspace: WorkspaceArgument = Path("."),
    kit: KitOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Each silo online or offline, and each job's state."""
    with OrchestratorClient(submitter_kit(workspace, kit), timeout=10) as client:
        try:
            report = client.status()
        except OrchestratorUnavailable as exc:
            if as_json:
                typer.echo(json.dumps({"orchestrator": "unreachable", "error": str(exc)}))
                raise typer.Exit(1) from exc
            raise
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    silos = Table(title=f"federation '{report.federation}'")
    for column in ("silo", "state", "last seen", "busy", "sandbox"):
        silos.add_column(column)
    now = time.time()
    for s in report.silos:
        seen = f"{now - s.last_seen:.1f} s ago" if s.last_seen else "never"
        state = "[green]online[/]" if s.online else "[red]offline[/]"
        sandbox = s.sandbox or "-"
        if sandbox == "none":
            sandbox = "[bold red]none (job code not confined)[/]"
        silos.add_row(s.name, state, seen, "yes" if s.busy else "", sandbox)
    console.print(silos)
    if report.jobs:
        jobs = Table(title="jobs")
        for column in ("job", "state", "round", "detail"):
            jobs.add_column(column, overflow="fold")
        for j in report.jobs:
            jobs.add_row(
                j.id, j.state.value, f"{j.current_round}/{j.rounds}", j.error or j.detail or ""
            )
        console.print(jobs)


def check(
    workspace: WorkspaceArgument = Path("."),
    kit: KitOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each silo.")] = 15.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Send a no-op job through every silo and report reachability and round-trip times."""
    with OrchestratorClient(submitter_kit(workspace, kit), timeout=timeout + 10) as client:
        started = time.perf_counter()
        client.whoami()
        connect = time.perf_counter() - started
        report = client.check(timeout)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        console.print(
            f"orchestrator {client.url}: reachable, mutual TLS ok ({connect * 1000:.0f} ms)"
        )
        table = Table(title="silos")
        for column in ("silo", "reachable", "job ran", "round trip", "problem"):
            table.add_column(column, overflow="fold")
        for line in report.silos:
            rtt = f"{line.round_trip_seconds * 1000:.0f} ms" if line.round_trip_seconds else "-"
            table.add_row(line.silo, _yes(line.reachable), _yes(line.ran), rtt, line.error or "")
        console.print(table)
    if not all(line.ran for line in report.silos):
        raise typer.Exit(1)


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def orchestrator_start(
    kit: KitDir,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="FEDSILO_DATABASE_URL",
            help="SQLAlchemy URL of the state database (default: SQLite in storage).",
        ),
    ] = None,
) -> None:
    """Serve the orchestrator of KIT in the foreground."""
    from fedsilo.orchestrator import serve

    _logging()
    serve(kit, database_url=database_url)


def silo_start(kit: KitDir) -> None:
    """Run the agent of silo KIT in the foreground (connects out; opens no port)."""
    from fedsilo.silo import run_agent

    _logging()
    run_agent(kit)


orchestrator_app.command("start")(orchestrator_start)
silo_app.command("start")(silo_start)


def register(app: typer.Typer) -> None:
    """Add the runtime commands to the root app."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(check)
    app.add_typer(orchestrator_app)
    app.add_typer(silo_app)
