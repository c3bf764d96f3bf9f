"""``fedsilo up | down | status | check`` and the per-process ``orchestrator`` / ``silo``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fedsilo.api import EXPIRY_WARNING_DAYS, OrchestratorClient, StatusReport
from fedsilo.cli import _hints as hints
from fedsilo.cli import _tables as tables
from fedsilo.cli._common import KitOption, WorkspaceArgument, caller_kit, console
from fedsilo.cli._database import db_app
from fedsilo.cli._errors import errors
from fedsilo.cli._members import expiry
from fedsilo.config import Role, format_bytes, format_seconds
from fedsilo.errors import FedsiloError, OrchestratorUnavailable
from fedsilo.runtime import ProcessInfo

orchestrator_app = typer.Typer(
    name="orchestrator", help="Run the orchestrator.", no_args_is_help=True
)
silo_app = typer.Typer(
    name="silo", help="Run a silo's agent, and read the errors it keeps.", no_args_is_help=True
)
node_app = typer.Typer(
    name="node", help="Run a machine of a silo's compute that spans several.", no_args_is_help=True
)

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
    """Start the orchestrator and, per silo, its agent and approval endpoint: each a process.

    In a federation that lost some processes, only the missing ones are started."""
    from fedsilo.runtime import processes
    from fedsilo.runtime import up as start

    before = {p.name for p in _local_processes(workspace) if p.alive}
    report = start(workspace, timeout=timeout)
    if before:
        started = [p.name for p in processes(workspace) if p.alive and p.name not in before]
        console.print(
            f"started {', '.join(started)}; the other processes were running (logs in "
            f"{workspace / 'logs'})",
            highlight=False,
        )
        return
    console.print(
        f"federation '{report.federation}' is up: orchestrator and "
        f"{len(report.silos)} silo agents online (logs in {workspace / 'logs'})"
    )


def _local_processes(workspace: Path) -> list[ProcessInfo]:
    """The processes ``fedsilo up`` started in ``workspace`` (none if it is not one)."""
    from fedsilo.runtime import processes

    try:
        return processes(workspace)
    except FedsiloError:
        return []


def _processes_table(procs: list[ProcessInfo]) -> Table:
    table = tables.table(
        "processes on this machine (fedsilo up)", "process", "pid", "state", "log", wrap=("log",)
    )
    for p in procs:
        state = "[green]running[/]" if p.alive else "[bold red]down[/]"
        table.add_row(p.name, str(p.pid), state, p.log)
    return table


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
    """Each silo online or offline, each job's state, and the federation's members.

    A submitter sees its own jobs and those shared with it, the federation's administrator
    every job, a silo's kit that silo and the jobs that run in it."""
    readers = (Role.SUBMITTER, Role.ADMIN, Role.SILO)
    local = _local_processes(workspace) if kit is None else []
    stopped = [p.name for p in local if not p.alive]
    with OrchestratorClient(caller_kit(workspace, kit, *readers), timeout=10) as client:
        try:
            report = client.status()
        except OrchestratorUnavailable as exc:
            if as_json:
                typer.echo(json.dumps({"orchestrator": "unreachable", "error": str(exc)}))
                raise typer.Exit(1) from exc
            if local:
                console.print(_processes_table(local))
                console.print(
                    f"down: {', '.join(stopped) or 'none'}; start what is missing with: "
                    + hints.up(workspace),
                    highlight=False,
                    soft_wrap=True,
                )
                raise typer.Exit(1) from exc
            raise
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    notes = tables.Footnotes()
    tables.print_table(console, _silos_table(report, notes), notes)
    computes = _computes_table(report)
    if computes is not None:
        console.print(computes)
    if report.jobs:
        jobs = tables.table("jobs", "job", "owner", "state", "round", "detail", wrap=("detail",))
        for j in report.jobs:
            jobs.add_row(
                j.id,
                j.submitter,
                j.state.value,
                f"{j.current_round}/{j.rounds}",
                Text(j.error or j.detail or ""),
            )
        console.print(jobs)
    if report.members:
        members = tables.table("members", "participant", "roles", "certificate expires")
        soon = []
        for m in report.members:
            members.add_row(m.name, ", ".join(m.roles), expiry(m.expires))
            if m.expires is not None and m.expires - time.time() < EXPIRY_WARNING_DAYS * 86400:
                soon.append(m.name)
        tables.print_table(console, members)
        for name in soon:
            console.print(
                f"[yellow]warning:[/] the certificate of '{name}' expires within "
                f"{EXPIRY_WARNING_DAYS} days; its holder renews it on its own machine "
                "(docs/provisioning.md, renewing a certificate)",
                highlight=False,
            )
    if report.you is not None:
        console.print(f"you are {report.you.name} ({', '.join(report.you.roles)})", highlight=False)
    if local:
        console.print(_processes_table(local))
        if stopped:
            console.print(
                f"down: {', '.join(stopped)}; start only those with: " + hints.up(workspace),
                highlight=False,
                soft_wrap=True,
            )


def _silos_table(report: StatusReport, notes: tables.Footnotes) -> Table:
    """Each silo: online or not, and how it runs job code, as its agent last reported."""
    shown = tables.table(
        f"federation '{report.federation}'",
        "silo",
        "state",
        "last seen",
        "busy",
        "sandbox",
        "limits",
        "errors",
        wrap=("last seen", "sandbox", "limits", "errors"),
    )
    now = time.time()
    for s in report.silos:
        seen = f"{now - s.last_seen:.1f} s ago" if s.last_seen else "never"
        state = "[green]online[/]" if s.online else "[red]offline[/]"
        if s.report is None:
            unknown = notes.dash("its agent has not reported how it runs jobs since it started")
            shown.add_row(s.name, state, seen, "yes" if s.busy else "no", *[unknown] * 3)
            continue
        sandbox = s.report.sandbox
        if sandbox == "none":
            sandbox = "[bold red]none (job code not confined)[/]"
        limits = s.report.enforcement
        if limits == "rlimits":
            limits = "[yellow]rlimits (per process, not per job)[/]"
        errors = (
            "[bold yellow]shared (message and traceback)[/]"
            if s.report.share_errors
            else "kept in the silo"
        )
        shown.add_row(s.name, state, seen, "yes" if s.busy else "no", sandbox, limits, errors)
    return shown


def _computes_table(report: StatusReport) -> Table | None:
    """Each silo's computes: what they have, what one job may take, what is in use."""
    rows = [(s.name, c) for s in report.silos if s.report is not None for c in s.report.computes]
    if not rows:
        return None
    table = tables.table(
        "computes",
        "silo",
        "compute",
        "threads",
        "gpus",
        "memory",
        "one job",
        "a step",
        "jobs",
        wrap=("compute", "gpus", "memory", "one job", "a step", "jobs"),
    )
    for silo, c in rows:
        gpus = f"{c.gpus_used}/{len(c.gpus)} {list(c.gpus)}" if c.gpus else "none"
        job = f"{c.job_threads} threads, {format_bytes(c.job_memory)}"
        if c.gpus:
            job += f", {c.job_gpus} GPUs"
        step = f"{c.processes} processes"
        if c.cpu is not None:
            step += f", cpu {c.cpu:g}"
        if c.disk is not None:
            step += f", disk {format_bytes(c.disk)}"
        step += ", " + (
            format_seconds(c.max_step_seconds) if c.max_step_seconds else "no time limit"
        )
        jobs = ", ".join(c.running) or "none running"
        if c.queued:
            jobs += f"; queued: {', '.join(c.queued)}"
        table.add_row(
            silo,
            f"{c.name} ({c.kind})",
            f"{c.threads_used}/{c.threads}",
            gpus,
            f"{format_bytes(c.memory_used)}/{format_bytes(c.memory)}",
            job,
            step,
            jobs,
        )
    return table


def check(
    workspace: WorkspaceArgument = Path("."),
    kit: KitOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each silo.")] = 15.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Send a no-op job through every silo and report reachability and round-trip times."""
    kit_of = caller_kit(workspace, kit, Role.SUBMITTER, Role.ADMIN)
    with OrchestratorClient(kit_of, timeout=timeout + 10) as client:
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
        table = tables.table(
            "silos", "silo", "reachable", "job ran", "round trip", "problem", wrap=("problem",)
        )
        for line in report.silos:
            rtt = "no answer"
            if line.round_trip_seconds:
                rtt = f"{line.round_trip_seconds * 1000:.0f} ms"
            table.add_row(
                line.silo, _yes(line.reachable), _yes(line.ran), rtt, Text(line.error or "")
            )
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


def silo_start(
    kit: KitDir,
    cores: Annotated[
        int | None,
        typer.Option(
            "--cores",
            min=1,
            help="Cores of this machine the silo's computes own when they declare no "
            "threads (default: every core this process may run on).",
        ),
    ] = None,
) -> None:
    """Run the agent of silo KIT in the foreground (connects out; opens no port)."""
    from fedsilo.silo import run_agent

    _logging()
    run_agent(kit, cores=cores)


def node_start(
    kit: KitDir,
    node: Annotated[
        str, typer.Option("--node", help="This machine's name among the compute's nodes.")
    ],
) -> None:
    """Serve as one machine of a silo's compute (listens on its address on the silo's
    network; runs the ranks of job steps the silo's agent asks for)."""
    from fedsilo.silo._node import run_node

    _logging()
    run_node(kit, node)


orchestrator_app.command("start")(orchestrator_start)
orchestrator_app.add_typer(db_app)
silo_app.command("start")(silo_start)
silo_app.command("errors")(errors)
node_app.command("start")(node_start)


def register(app: typer.Typer) -> None:
    """Add the runtime commands to the root app."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(check)
    app.add_typer(orchestrator_app)
    app.add_typer(silo_app)
    app.add_typer(node_app)
