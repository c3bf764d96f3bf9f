"""The orchestrator's state in SQL: jobs, tasks, rounds, metrics and blobs.

SQLite in the orchestrator's storage by default; PostgreSQL in production by changing one
setting (``--database-url postgresql://USER@HOST/DB``, driven by psycopg 3, the
``fedsilo[postgres]`` extra). Every method is one short transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from fedsilo.errors import ConfigError
from fedsilo.orchestrator._migrations import (
    SchemaState,
    SchemaStatus,
    revisions,
    schema_status,
    upgrade,
)

__all__ = [
    "BlobRow",
    "CertificateRow",
    "CheckpointRow",
    "JobRow",
    "MemberRow",
    "MetricRow",
    "NoteRow",
    "RoundRow",
    "Store",
    "TaskRow",
    "database_url",
    "redacted",
    "schema_of",
]


class _Base(DeclarativeBase):
    pass


class JobRow(_Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    submitter: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    bundle_digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class TaskRow(_Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True, index=True)
    silo: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    round: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending, assigned, done, failed
    message_json: Mapped[str] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    assigned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RoundRow(_Base):
    __tablename__ = "rounds"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    global_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class MetricRow(_Base):
    __tablename__ = "metrics"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    silo: Mapped[str] = mapped_column(String(64), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)  # train, evaluate
    metrics_json: Mapped[str] = mapped_column(Text)


class NoteRow(_Base):
    """Something the orchestrator noticed of a silo's update in a round: an update sent
    again (``replay``), one scaled back onto the job's bound (``clipped``)."""

    __tablename__ = "round_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    silo: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class CheckpointRow(_Base):
    """A running job's state at its last closed round, for the orchestrator to go on from
    after a restart (:mod:`fedsilo.orchestrator._resume`)."""

    __tablename__ = "checkpoints"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer)
    global_digest: Mapped[str] = mapped_column(String(64))
    state_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class MemberRow(_Base):
    """A participant of the federation: those of the orchestrator's kit, and those an
    administrator added since (:mod:`fedsilo.orchestrator._members`). A removed member
    keeps its row, with who removed it and when."""

    __tablename__ = "members"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    compute: Mapped[str | None] = mapped_column(String(64), nullable=True)
    added_at: Mapped[float] = mapped_column(Float)
    added_by: Mapped[str] = mapped_column(String(64))
    removed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    removed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CertificateRow(_Base):
    """A certificate a member connects with, by fingerprint; several while one renews.
    ``not_after`` is its expiry, once known; a revoked one is refused from then on."""

    __tablename__ = "certificates"
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    member: Mapped[str] = mapped_column(ForeignKey("members.name"), index=True)
    not_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    added_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class BlobRow(_Base):
    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)  # a model may pass 2 GiB
    owner: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def database_url(url: str) -> str:
    """``url`` with a plain ``postgresql://`` given psycopg 3, the driver fedsilo installs.

    SQLAlchemy would otherwise pick psycopg2 for ``postgresql://``; a URL naming its own
    driver (``postgresql+psycopg2://``) is kept as it is.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"the database URL {url!r} is not a SQLAlchemy URL ({exc}); give for example "
            "postgresql://USER@HOST:5432/DATABASE or sqlite:////path/to/orchestrator.db",
            field="database_url",
        ) from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a URL>"


def _engine(url: str) -> Engine:
    """An engine for ``url`` (given by :func:`database_url`), or a :class:`ConfigError`
    naming it when its driver is not installed."""
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"no database driver for {redacted(url)} ({exc}); for PostgreSQL install "
            "fedsilo[postgres] (psycopg 3) next to fedsilo",
            field="database_url",
        ) from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@contextmanager
def _reaching(engine: Engine) -> Iterator[None]:
    """A first use of ``engine``: closed on any error, a database it cannot reach a
    :class:`ConfigError` naming it."""
    try:
        yield
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        shown = engine.url.render_as_string(hide_password=True)
        raise ConfigError(
            f"cannot open the orchestrator's database {shown}: {reason}; check "
            "--database-url (or FEDSILO_DATABASE_URL), that the server runs and "
            "accepts this user, and that the database exists",
            field="database_url",
        ) from exc
    except BaseException:
        engine.dispose()
        raise


def schema_of(url: str) -> SchemaStatus:
    """Where the database at ``url`` stands against this fedsilo's schema revisions, as
    opening a :class:`Store` would find it; changes nothing (a SQLite file that does not
    exist is not created)."""
    url = database_url(url)
    engine = _engine(url)
    path = engine.url.database
    if engine.dialect.name == "sqlite" and path and path != ":memory:" and not Path(path).exists():
        engine.dispose()
        order = tuple(revision for revision, _ in revisions())
        return SchemaStatus(SchemaState.EMPTY, None, order[-1], order)
    with _reaching(engine), engine.connect() as connection:
        status = schema_status(connection)
    engine.dispose()
    return status


class Store:
    """Persistence for the orchestrator; one instance per process.

    Opening a store brings its database to the newest schema revision
    (:mod:`fedsilo.orchestrator._migrations`): a new database (an empty PostgreSQL
    database, or no SQLite file yet) gets every table, an older one is upgraded in place,
    and one a newer fedsilo wrote is refused. ``schema`` says where the database stood
    when opened. A database that cannot be reached, or whose driver is not installed, is
    a :class:`ConfigError` naming the URL (its password masked).
    """

    def __init__(self, url: str) -> None:
        self.url = database_url(url)
        self.engine: Engine = _engine(self.url)
        with _reaching(self.engine):
            self.schema: SchemaStatus = upgrade(self.engine, redacted(self.url))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: the kind of database the state is in."""
        return str(self.engine.dialect.name)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs -------------------------------------------------------------------------------

    def add_job(self, row: JobRow) -> None:
        with self.session() as s:
            s.add(row)

    def job(self, job_id: str) -> JobRow | None:
        with self.session() as s:
            return s.get(JobRow, job_id)

    def jobs(self, limit: int = 50) -> list[JobRow]:
        with self.session() as s:
            rows = s.scalars(select(JobRow).order_by(JobRow.created_at.desc()).limit(limit))
            return list(rows)

    def update_job(self, job_id: str, **values: Any) -> None:
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    # -- tasks ------------------------------------------------------------------------------

    def add_tasks(self, rows: list[TaskRow]) -> None:
        """Insert a fan-out's tasks in one transaction."""
        with self.session() as s:
            s.add_all(rows)

    def finish_task(
        self, task_id: str, *, ok: bool, result_json: str, assigned_at: float | None = None
    ) -> None:
        """Record a task's result, and when it reached its silo if that is known."""
        values: dict[str, Any] = {
            "state": "done" if ok else "failed",
            "result_json": result_json,
            "finished_at": time.time(),
        }
        if assigned_at is not None:
            values["assigned_at"] = assigned_at
        with self.session() as s:
            s.execute(update(TaskRow).where(TaskRow.id == task_id).values(**values))

    def cancel_pending_tasks(self, job_id: str) -> None:
        with self.session() as s:
            s.execute(
                update(TaskRow)
                .where(TaskRow.job_id == job_id, TaskRow.state.in_(("pending", "assigned")))
                .values(state="failed", finished_at=time.time())
            )

    # -- rounds and metrics -----------------------------------------------------------------

    def start_round(self, job_id: str, round_: int) -> None:
        with self.session() as s:
            s.merge(RoundRow(job_id=job_id, round=round_, started_at=time.time()))

    def finish_round(
        self,
        job_id: str,
        round_: int,
        global_digest: str | None,
        metrics: Sequence[tuple[int, str, str, dict[str, float]]] = (),
        *,
        checkpoint: tuple[str | None, str] | None = None,
    ) -> None:
        """Close a round and write the metrics gathered during it, in one transaction.

        ``metrics`` holds ``(round, silo, phase, values)``; evaluation metrics of the
        previous round's model arrive with this round's training. ``checkpoint`` (the
        strategy state's blob digest and JSON) is the state a restarted orchestrator
        goes on from, saved with the round so the two never disagree.
        """
        with self.session() as s:
            s.execute(
                update(RoundRow)
                .where(RoundRow.job_id == job_id, RoundRow.round == round_)
                .values(global_digest=global_digest, finished_at=time.time())
            )
            _merge_metrics(s, job_id, metrics)
            if checkpoint is not None and global_digest is not None:
                s.merge(
                    CheckpointRow(
                        job_id=job_id,
                        round=round_,
                        global_digest=global_digest,
                        state_digest=checkpoint[0],
                        state_json=checkpoint[1],
                        created_at=time.time(),
                    )
                )

    def checkpoint(self, job_id: str) -> CheckpointRow | None:
        """The job's state at its last closed round, if one was saved."""
        with self.session() as s:
            return s.get(CheckpointRow, job_id)

    def unfinished_jobs(self) -> list[JobRow]:
        """Jobs an earlier process left queued or running, oldest first."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(JobRow)
                    .where(JobRow.state.in_(("queued", "running")))
                    .order_by(JobRow.created_at)
                )
            )

    def close_open_tasks(self, job_id: str | None = None) -> None:
        """Fail the tasks an earlier process left open (of one job, or of all)."""
        with self.session() as s:
            query = update(TaskRow).where(TaskRow.state.in_(("pending", "assigned")))
            if job_id is not None:
                query = query.where(TaskRow.job_id == job_id)
            s.execute(query.values(state="failed", finished_at=time.time()))

    def uploads(self, job_id: str) -> list[tuple[int, str, str]]:
        """``(round, silo, params digest)`` of every parameter file a silo sent for a job."""
        with self.session() as s:
            rows = s.execute(
                select(TaskRow.round, TaskRow.silo, TaskRow.result_json).where(
                    TaskRow.job_id == job_id, TaskRow.state == "done"
                )
            )
            found = []
            for round_, silo, result_json in rows:
                try:
                    digest = json.loads(result_json or "{}").get("params_digest")
                except ValueError:
                    continue
                if isinstance(digest, str):
                    found.append((int(round_), str(silo), digest))
            return found

    def add_metrics(
        self, job_id: str, metrics: Sequence[tuple[int, str, str, dict[str, float]]]
    ) -> None:
        """Record ``(round, silo, phase, values)`` metrics of rounds already closed."""
        with self.session() as s:
            _merge_metrics(s, job_id, metrics)

    def rounds(self, job_id: str, *, since: int = 0) -> list[RoundRow]:
        """The job's rounds numbered ``since`` or later, in order."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(RoundRow)
                    .where(RoundRow.job_id == job_id, RoundRow.round >= since)
                    .order_by(RoundRow.round)
                )
            )

    def metrics(self, job_id: str, *, since: int = 0) -> list[MetricRow]:
        """The job's metrics of rounds ``since`` or later, by round and silo."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(MetricRow)
                    .where(MetricRow.job_id == job_id, MetricRow.round >= since)
                    .order_by(MetricRow.round, MetricRow.silo)
                )
            )

    def add_note(self, job_id: str, round_: int, silo: str, kind: str, text: str) -> None:
        """Record a note on ``silo``'s update in ``round_`` of a job."""
        with self.session() as s:
            s.add(
                NoteRow(
                    job_id=job_id,
                    round=round_,
                    silo=silo,
                    kind=kind,
                    text=text,
                    created_at=time.time(),
                )
            )

    def notes(self, job_id: str, *, since: int = 0) -> list[NoteRow]:
        """The job's notes on rounds ``since`` or later, in the order they were made."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(NoteRow)
                    .where(NoteRow.job_id == job_id, NoteRow.round >= since)
                    .order_by(NoteRow.id)
                )
            )

    # -- blobs ------------------------------------------------------------------------------

    def add_blob(self, digest: str, size: int, owner: str) -> None:
        """Record a blob once; the same content uploaded again keeps its first record."""
        with self.session() as s:
            if s.get(BlobRow, digest) is None:
                s.add(BlobRow(digest=digest, size=size, owner=owner, created_at=time.time()))

    # -- members ----------------------------------------------------------------------------

    def members(self) -> tuple[list[MemberRow], list[CertificateRow]]:
        """Every member ever recorded (removed ones too) and every certificate."""
        with self.session() as s:
            members = list(s.scalars(select(MemberRow).order_by(MemberRow.name)))
            certificates = list(s.scalars(select(CertificateRow)))
            return members, certificates

    def put_member(self, member: MemberRow, certificate: CertificateRow | None) -> None:
        """Add ``member`` (or admit again a removed one of that name) with a certificate."""
        with self.session() as s:
            s.merge(member)
            s.flush()
            if certificate is not None:
                s.merge(certificate)

    def add_certificate(self, row: CertificateRow) -> None:
        with self.session() as s:
            s.add(row)

    def remove_member(self, name: str, *, by: str) -> None:
        with self.session() as s:
            s.execute(
                update(MemberRow)
                .where(MemberRow.name == name)
                .values(removed_at=time.time(), removed_by=by)
            )

    def revoke(self, fingerprints: Sequence[str], *, by: str) -> None:
        with self.session() as s:
            s.execute(
                update(CertificateRow)
                .where(CertificateRow.fingerprint.in_(fingerprints))
                .values(revoked_at=time.time(), revoked_by=by)
            )

    def certificate_expiry(self, fingerprint: str, not_after: float) -> None:
        with self.session() as s:
            s.execute(
                update(CertificateRow)
                .where(CertificateRow.fingerprint == fingerprint)
                .values(not_after=not_after)
            )


def _merge_metrics(
    session: Session, job_id: str, metrics: Sequence[tuple[int, str, str, dict[str, float]]]
) -> None:
    """Record metrics, each replacing any recorded before under its (round, silo, phase):
    one upsert for all of them (a round of 30 silos records 60), the last of a key kept."""
    rows = {
        (metric_round, silo, phase): {
            "job_id": job_id,
            "round": metric_round,
            "silo": silo,
            "phase": phase,
            "metrics_json": json.dumps(values),
        }
        for metric_round, silo, phase, values in metrics
    }
    if not rows:
        return
    insert: sqlite.Insert | postgresql.Insert
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        insert = sqlite.insert(MetricRow)
    elif dialect == "postgresql":
        insert = postgresql.insert(MetricRow)
    else:  # a database without ON CONFLICT: one merge a row
        for row in rows.values():
            session.merge(MetricRow(**row))
        return
    upsert = insert.on_conflict_do_update(
        index_elements=["job_id", "round", "silo", "phase"],
        set_={"metrics_json": insert.excluded.metrics_json},
    )
    session.execute(upsert, list(rows.values()))
