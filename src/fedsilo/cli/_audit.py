"""``fedsilo audit``: show a participant's audit log and verify its hash chain."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedsilo.audit import AuditEntry, audit_path, canonical_json, read_log, verify_log
from fedsilo.cli import _tables as tables
from fedsilo.cli._common import WorkspaceOption
from fedsilo.config import ORCHESTRATOR_NAME, Kit, Role, load_kit, open_workspace
from fedsilo.errors import ConfigError

audit_app = typer.Typer(
    name="audit",
    help="Show the audit logs of silos and the orchestrator, and verify their hash chains.",
    no_args_is_help=True,
)

SiloOption = Annotated[
    str | None,
    typer.Option("--silo", help="The silo whose log to read."),
]
OrchestratorOption = Annotated[
    bool,
    typer.Option("--orchestrator", help="Read the orchestrator's log."),
]
KitOption = Annotated[
    Path | None,
    typer.Option("--kit", help="A silo's or the orchestrator's kit folder, on its own machine."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@dataclass(frozen=True)
class _Target:
    name: str
    path: Path


def _targets(
    silo: str | None, orchestrator: bool, workspace: Path, kit: Path | None
) -> list[_Target]:
    """The logs the options select; every participant's with none of them."""
    if silo is not None and orchestrator:
        raise typer.BadParameter(
            "give --silo NAME or --orchestrator, not both", param_hint="--silo"
        )
    if kit is not None:
        loaded = load_kit(kit)
        if silo is not None and silo != loaded.name:
            raise ConfigError(f"the kit in {kit} belongs to '{loaded.name}', not to silo '{silo}'")
        if orchestrator and loaded.role is not Role.ORCHESTRATOR:
            raise ConfigError(f"the kit in {kit} belongs to '{loaded.name}', not the orchestrator")
        return [_target(loaded)]
    ws = open_workspace(workspace)
    if silo is None and not orchestrator:
        return [_target(ws.kit(name)) for name in (ORCHESTRATOR_NAME, *ws.silo_names)]
    if orchestrator:
        return [_target(ws.kit(ORCHESTRATOR_NAME))]
    assert silo is not None
    selected = ws.kit(silo)
    if selected.role is not Role.SILO:
        raise ConfigError(f"'{silo}' is not a silo (for the orchestrator's log: --orchestrator)")
    return [_target(selected)]


def _target(kit: Kit) -> _Target:
    if kit.role is Role.SUBMITTER:
        raise ConfigError(f"'{kit.name}' is a submitter, which keeps no audit log")
    return _Target(kit.name, audit_path(kit.storage_path))


def show(
    silo: SiloOption = None,
    orchestrator: OrchestratorOption = False,
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
    tail: Annotated[
        int | None, typer.Option("--tail", min=0, help="Only the last N entries shown.")
    ] = None,
    event: Annotated[
        str | None, typer.Option("--event", help="Only entries of this event (job.refused).")
    ] = None,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Times, digests and ids whole, however wide the table."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Print one participant's audit log: seq, time (UTC), actor, event and details.

    Digests and ids in the details show their first 12 characters and an ellipsis;
    --wide or --json prints them whole."""
    if silo is None and not orchestrator and kit is None:
        raise typer.BadParameter(
            "give --silo NAME, --orchestrator or --kit KIT_DIR", param_hint="--silo"
        )
    (target,) = _targets(silo, orchestrator, workspace, kit)
    entries = [e for e in read_log(target.path) if event is None or e.event == event]
    if tail is not None:
        entries = entries[max(len(entries) - tail, 0) :]
    if as_json:
        for entry in entries:
            typer.echo(canonical_json(entry.model_dump()))
        return
    console = Console()
    console.print(f"audit log of '{target.name}': {target.path}", highlight=False, soft_wrap=True)
    console.print(_entries_table(entries, wide))


def _entries_table(entries: list[AuditEntry], wide: bool) -> Table:
    """One entry a row, its data wrapped; digests and ids cut short unless ``wide``."""
    shown = tables.table("audit log", "seq", "time", "actor", "event", "data", wrap=("data",))
    for entry in entries:
        data = _summary(entry)
        shown.add_row(
            str(entry.seq),
            Text(entry.time if wide else entry.time[:19].replace("T", " ")),
            Text(entry.actor),
            Text(entry.event),
            Text(data if wide else _LONG_HEX.sub(_cut, data)),
        )
    return shown


_LONG_HEX = re.compile(r"\b[0-9a-f]{32,}\b")


def _cut(match: re.Match[str]) -> str:
    return match.group()[: tables.SHORT] + "…"


def verify(
    silo: SiloOption = None,
    orchestrator: OrchestratorOption = False,
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
    expect_at_least: Annotated[
        int | None,
        typer.Option(
            "--expect-at-least",
            min=0,
            help="Fail if the log has fewer entries (catches lines cut from its end).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check audit hash chains and name the first bad line; exit 1 if any log was tampered.

    With none of --silo, --orchestrator and --kit, checks every participant's log in the
    workspace.
    """
    targets = _targets(silo, orchestrator, workspace, kit)
    if expect_at_least is not None and len(targets) != 1:
        raise typer.BadParameter(
            "needs one log: give --silo NAME, --orchestrator or --kit KIT_DIR",
            param_hint="--expect-at-least",
        )
    results = [(t, verify_log(t.path, expect_at_least=expect_at_least)) for t in targets]
    if as_json:
        rows = [
            {
                "participant": t.name,
                "path": str(t.path),
                "ok": r.ok,
                "entries": r.entries,
                "first_bad_line": r.first_bad_line,
                "problem": r.problem,
            }
            for t, r in results
        ]
        typer.echo(json.dumps(rows, indent=2))
    else:
        for target, result in results:
            if result.ok:
                line = f"ok: {result.entries} entries, chain intact"
            else:
                line = f"TAMPERED: {result.problem} ({target.path})"
            typer.echo(line if len(results) == 1 else f"{target.name}: {line}")
    if not all(result.ok for _, result in results):
        raise typer.Exit(1)


def _summary(entry: AuditEntry) -> str:
    return ", ".join(
        f"{key}={value if isinstance(value, str) else canonical_json(value)}"
        for key, value in entry.data.items()
    )


audit_app.command("show")(show)
audit_app.command("verify")(verify)


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command group to the root app."""
    app.add_typer(audit_app, name="audit")
