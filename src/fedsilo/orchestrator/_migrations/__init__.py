"""Revisions of the orchestrator's database schema, and upgrading a database in place.

Each script in ``versions/`` is one Alembic revision, numbered in order: ``0001`` is the
schema the orchestrator made before revisions were recorded, each later one says what
it changed. Opening the store (:class:`fedsilo.orchestrator._db.Store`) brings its
database to the newest revision, in one transaction, under a lock other orchestrators
opening the same database wait on (SQLite's write lock, a PostgreSQL advisory lock):

- no fedsilo table yet: the revisions run from the first, so a new database is built by
  the same scripts that upgrade an old one;
- fedsilo's tables without a recorded revision (made before revisions were recorded):
  recognised by their tables and columns, recorded at the revision they match, upgraded;
- an older recorded revision: upgraded;
- a revision this code does not know (a newer fedsilo wrote it), or tables that match no
  revision: refused with a :class:`~fedsilo.errors.ConfigError`, the database untouched.

A change to the models in ``_db.py`` needs a new script here (``revision`` the next
number, ``down_revision`` the current newest); ``tests/orchestrator/test_migrations.py``
fails until the newest revision makes exactly the models' tables, and prints the
operations that are missing. Alembic's own run-time configuration (``alembic.ini``,
``env.py``) is not used: the revisions run on the store's own connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from fedsilo import __version__
from fedsilo._migrating import MIGRATIONS
from fedsilo.errors import ConfigError

__all__ = [
    "VERSION_TABLE",
    "SchemaState",
    "SchemaStatus",
    "refusal",
    "revisions",
    "schema_status",
    "upgrade",
]

log = logging.getLogger("fedsilo.orchestrator")

VERSION_TABLE = "fedsilo_schema_version"
"""Where the database's revision is recorded; not Alembic's default ``alembic_version``,
which MLflow's tracking store also uses, so both may share one PostgreSQL database."""

# The PostgreSQL advisory lock held while a schema is checked and upgraded: "fedsilo".
_LOCK_KEY = int.from_bytes(b"fedsilo", "big")

Shape = Mapping[str, frozenset[str]]
"""A schema as the tables fedsilo knows, each with its column names."""


class SchemaState(Enum):
    """Where a database stands against the revisions this fedsilo knows."""

    EMPTY = "empty"
    UNRECORDED = "unrecorded"
    BEHIND = "behind"
    CURRENT = "current"
    NEWER = "newer"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SchemaStatus:
    """A database's schema: its ``state``, its ``revision`` (recorded, or recognised by
    its tables when none is recorded), this code's ``head``, the revisions an upgrade
    applies (oldest first), and for an unknown schema what differs."""

    state: SchemaState
    revision: str | None
    head: str
    pending: tuple[str, ...] = ()
    problem: str = ""


@contextmanager
def _quiet() -> Iterator[None]:
    """Alembic's own notes (its context, each script it runs, also for the in-memory
    build) held back: the store logs what it changed, once."""
    alembic_log = logging.getLogger("alembic.runtime.migration")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_log.setLevel(level)


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(Path(__file__).parent))


def revisions() -> list[tuple[str, str]]:
    """``(revision, what it changed)`` of every revision, oldest first: the first line of
    its script's docstring."""
    found = [
        (s.revision, (s.doc or "").strip().splitlines()[0].rstrip("."))
        for s in _script().walk_revisions()
    ]
    return found[::-1]


def _order() -> tuple[str, ...]:
    return tuple(revision for revision, _doc in revisions())


def _migrate(connection: Connection, destination: str) -> None:
    """Run the revisions from the recorded one to ``destination``, in the connection's
    transaction."""
    script = _script()

    def steps(heads: Any, _context: MigrationContext) -> Any:
        # what alembic's own ``upgrade`` command runs, without its env.py
        return script._upgrade_revs(destination, heads)

    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "fn": steps}
    )
    with MIGRATIONS, Operations.context(context):  # alembic's proxies are process-wide
        context.run_migrations()


def _shape(
    connection: Connection, tables: Iterable[str] | None = None
) -> dict[str, frozenset[str]]:
    inspector = inspect(connection)
    wanted = None if tables is None else set(tables)
    return {
        table: frozenset(column["name"] for column in inspector.get_columns(table))
        for table in inspector.get_table_names()
        if table != VERSION_TABLE and (wanted is None or table in wanted)
    }


@cache
def _shapes() -> dict[str, Shape]:
    """The tables each revision leaves, built once in an in-memory SQLite database."""
    shapes: dict[str, Shape] = {}
    engine = create_engine("sqlite://")
    try:
        with _quiet(), engine.begin() as connection:
            for revision in _order():
                _migrate(connection, revision)
                shapes[revision] = _shape(connection)
    finally:
        engine.dispose()
    return shapes


def _differences(found: Shape, expected: Shape) -> list[str]:
    said = []
    for table in sorted(expected.keys() | found.keys()):
        if table not in found:
            said.append(f"no table {table}")
        elif table not in expected:
            said.append(f"a table {table} it should not have yet")
        else:
            said += [f"no column {table}.{c}" for c in sorted(expected[table] - found[table])]
            said += [
                f"an unknown column {table}.{c}" for c in sorted(found[table] - expected[table])
            ]
    return said


def schema_status(connection: Connection) -> SchemaStatus:
    """Where the database of ``connection`` stands; changes nothing."""
    order, shapes = _order(), _shapes()
    head = order[-1]
    recorded = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_heads()
    found = _shape(connection, {table for shape in shapes.values() for table in shape})
    if not recorded:
        if not found:
            return SchemaStatus(SchemaState.EMPTY, None, head, order)
        # the newest revision whose tables these are; else the closest, to say what differs
        ranked = sorted(
            enumerate(order), key=lambda i: (len(_differences(found, shapes[i[1]])), -i[0])
        )
        index, closest = ranked[0]
        problem = _differences(found, shapes[closest])
        if not problem:
            return SchemaStatus(SchemaState.UNRECORDED, closest, head, order[index + 1 :])
        return SchemaStatus(
            SchemaState.UNKNOWN,
            None,
            head,
            problem=f"closest to revision {closest}, with " + ", ".join(problem),
        )
    shown = ",".join(recorded)
    if any(revision not in order for revision in recorded):
        return SchemaStatus(SchemaState.NEWER, shown, head)
    if len(recorded) > 1:
        return SchemaStatus(
            SchemaState.UNKNOWN, shown, head, problem=f"several revisions recorded ({shown})"
        )
    revision = recorded[0]
    problem = _differences(found, shapes[revision])
    if problem:
        return SchemaStatus(
            SchemaState.UNKNOWN,
            revision,
            head,
            problem=f"recorded at revision {revision}, with " + ", ".join(problem),
        )
    index = order.index(revision)
    state = SchemaState.CURRENT if revision == head else SchemaState.BEHIND
    return SchemaStatus(state, revision, head, order[index + 1 :])


def _lock(connection: Connection) -> None:
    """Begin the transaction the check and the upgrade run in, holding off any other
    process that opens the same database until it ends."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def refusal(status: SchemaStatus, shown: str) -> ConfigError | None:
    """Why a database in ``status`` cannot be used by this fedsilo, if it cannot."""
    if status.state is SchemaState.NEWER:
        return ConfigError(
            f"the orchestrator's database {shown} is at schema revision {status.revision}, "
            f"newer than this fedsilo {__version__} knows (its newest is {status.head}): a "
            "newer fedsilo wrote it. Upgrade fedsilo here to that release "
            "(pip install -U fedsilo) and start again, or give --database-url of another "
            "database; the database was left as it was",
            field="database_url",
        )
    if status.state is SchemaState.UNKNOWN:
        return ConfigError(
            f"the orchestrator's database {shown} has tables no fedsilo revision made "
            f"({status.problem}): changed by hand, or another program's. Restore it from a "
            "backup, or give --database-url of an empty database; the database was left "
            "as it was",
            field="database_url",
        )
    return None


def upgrade(engine: Engine, shown: str) -> SchemaStatus:
    """Bring the database of ``engine`` to the newest revision in one transaction; return
    where it stood before. ``shown`` names it in messages (its password masked)."""
    with _quiet(), engine.connect() as connection:
        _lock(connection)
        status = schema_status(connection)
        refused = refusal(status, shown)
        if refused is not None:
            raise refused
        if status.state is SchemaState.UNRECORDED and status.revision is not None:
            MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).stamp(
                _script(), status.revision
            )
        if status.pending:
            _migrate(connection, status.head)
        connection.commit()
    _report(status, shown)
    return status


def _report(status: SchemaStatus, shown: str) -> None:
    changes = dict(revisions())
    what = "; ".join(f"{r}: {changes[r]}" for r in status.pending)
    if status.state is SchemaState.EMPTY:
        log.info(
            "created the orchestrator's tables in %s at schema revision %s", shown, status.head
        )
    elif status.pending:
        log.info(
            "upgraded the orchestrator's database %s in place from schema revision %s%s to %s "
            "(%s); an older fedsilo can no longer open it",
            shown,
            status.revision,
            " (recognised by its tables)" if status.state is SchemaState.UNRECORDED else "",
            status.head,
            what,
        )
