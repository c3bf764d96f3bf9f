"""``fedsilo orchestrator db status | upgrade``: the orchestrator's database schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedsilo.cli import _hints as hints
from fedsilo.cli._common import console

if TYPE_CHECKING:
    from fedsilo.orchestrator._migrations import SchemaStatus

__all__ = ["db_app"]

db_app = typer.Typer(
    name="db",
    help="See and upgrade the orchestrator's database schema (start also upgrades it).",
    no_args_is_help=True,
)

OrchestratorKit = Annotated[Path, typer.Option("--kit", help="The orchestrator's kit folder.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="FEDSILO_DATABASE_URL",
        help="SQLAlchemy URL of the state database (default: SQLite in storage).",
    ),
]


def _url(kit_dir: Path, database_url: str | None) -> str:
    from fedsilo.config import load_kit
    from fedsilo.orchestrator._db import database_url as normalised
    from fedsilo.orchestrator._server import default_database_url

    return normalised(database_url or default_database_url(load_kit(kit_dir)))


def _changes(revisions: tuple[str, ...]) -> list[dict[str, str]]:
    from fedsilo.orchestrator._migrations import revisions as known

    said = dict(known())
    return [{"revision": r, "change": said[r]} for r in revisions]


def status(
    kit: OrchestratorKit,
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Where the orchestrator's database stands against this fedsilo's schema revisions,
    and what an upgrade would change; changes nothing."""
    from fedsilo import __version__
    from fedsilo.orchestrator._db import redacted, schema_of
    from fedsilo.orchestrator._migrations import refusal

    url = _url(kit, database_url)
    found, shown = schema_of(url), redacted(url)
    if as_json:
        report = {
            "database": shown,
            "state": found.state.value,
            "revision": found.revision,
            "head": found.head,
            "fedsilo": __version__,
            "pending": _changes(found.pending),
            "problem": found.problem or None,
        }
        typer.echo(json.dumps(report, indent=2))
    else:
        console.print(f"database: {shown}", highlight=False, soft_wrap=True)
        console.print(
            f"schema: {found.state.value}, revision {found.revision or '-'} "
            f"(this fedsilo {__version__} knows up to {found.head})",
            highlight=False,
        )
        for change in _changes(found.pending):
            console.print(f"  to apply: {change['revision']}  {change['change']}", highlight=False)
        if found.pending:
            console.print(
                "the orchestrator applies them when it starts, or now with: "
                + hints.command("orchestrator", "db", "upgrade", "--kit", kit),
                highlight=False,
                soft_wrap=True,
            )
    refused = refusal(found, shown)
    if refused is not None:
        raise refused


def upgrade(kit: OrchestratorKit, database_url: DatabaseUrl = None) -> None:
    """Bring the orchestrator's database to this fedsilo's schema, as starting the
    orchestrator would; safe while another orchestrator opens it."""
    from fedsilo.orchestrator._db import Store, redacted

    url = _url(kit, database_url)
    store = Store(url)
    store.close()
    console.print(f"{redacted(url)}: {_done(store.schema)}", highlight=False, soft_wrap=True)


def _done(found: SchemaStatus) -> str:
    from fedsilo.orchestrator._migrations import SchemaState

    applied = "; ".join(f"{c['revision']} {c['change']}" for c in _changes(found.pending))
    if found.state is SchemaState.EMPTY:
        return f"created at schema revision {found.head}"
    if found.pending:
        return f"upgraded in place from revision {found.revision} to {found.head} ({applied})"
    if found.state is SchemaState.UNRECORDED:
        return f"recorded at revision {found.head}, which its tables already had"
    return f"already at schema revision {found.head}; nothing to do"


db_app.command("status")(status)
db_app.command("upgrade")(upgrade)
