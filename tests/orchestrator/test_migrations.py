"""Schema revisions: a database of an earlier fedsilo is upgraded in place, one of a newer
fedsilo refused, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

from fedsilo import __version__
from fedsilo.errors import ConfigError
from fedsilo.orchestrator import _migrations as migrations
from fedsilo.orchestrator._db import Store, _Base, database_url
from fedsilo.orchestrator._migrations import (
    VERSION_TABLE,
    SchemaState,
    _migrate,
    revisions,
)

HERE = Path(__file__).parent
HEAD = revisions()[-1][0]
REVISION_0003_TABLES = ("members", "certificates")  # what came after checkpoints
T0 = 1_700_000_000.0


def _engine(url: str) -> Engine:
    return create_engine(database_url(url))


def _previous_release(url: str) -> None:
    """The tables an orchestrator made before revisions were recorded, from the SQL that
    fedsilo's create_all sent then, holding one finished job of two rounds."""
    engine = _engine(url)
    lines = (HERE / f"previous_schema.{engine.dialect.name}.sql").read_text().splitlines()
    sql = "\n".join(line for line in lines if not line.startswith("--"))
    spec = {"name": "mnist", "strategy": {"name": "fedavg"}, "rounds": 2}
    with engine.begin() as conn:
        for statement in filter(str.strip, sql.split(";")):
            conn.exec_driver_sql(statement)
        conn.execute(
            text(
                "INSERT INTO jobs (id, name, submitter, spec_json, bundle_digest, state, "
                "current_round, model_digest, created_at, started_at, finished_at) VALUES "
                "('job-1', 'mnist', 'alice', :spec, :bundle, 'succeeded', 2, :model, :t, :t, :t)"
            ),
            {"spec": json.dumps(spec), "bundle": "b" * 64, "model": "m" * 64, "t": T0},
        )
        for round_ in (1, 2):
            for silo in ("hospital-a", "hospital-b"):
                conn.execute(
                    text(
                        "INSERT INTO tasks (id, job_id, silo, kind, round, state, "
                        "message_json, result_json, created_at, finished_at) VALUES "
                        "(:id, 'job-1', :silo, 'train', :round, 'done', '{}', :result, :t, :t)"
                    ),
                    {
                        "id": f"t-{round_}-{silo}",
                        "silo": silo,
                        "round": round_,
                        "result": json.dumps({"params_digest": f"{round_}{silo[-1]}" * 32}),
                        "t": T0 + round_,
                    },
                )
                conn.execute(
                    text(
                        "INSERT INTO metrics (job_id, round, silo, phase, metrics_json) "
                        "VALUES ('job-1', :round, :silo, 'train', :values)"
                    ),
                    {"round": round_, "silo": silo, "values": json.dumps({"loss": 1 / round_})},
                )
            conn.execute(
                text(
                    "INSERT INTO rounds (job_id, round, global_digest, started_at, finished_at) "
                    "VALUES ('job-1', :round, :digest, :t, :t)"
                ),
                {"round": round_, "digest": str(round_) * 64, "t": T0 + round_},
            )
        conn.execute(
            text(
                "INSERT INTO round_notes (job_id, round, silo, kind, text, created_at) VALUES "
                "('job-1', 2, 'hospital-b', 'clipped', 'update scaled onto max_norm', :t)"
            ),
            {"t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO blobs (digest, size, owner, created_at) "
                "VALUES (:digest, 3000000000, 'hospital-a', :t)"
            ),
            {"digest": "m" * 64, "t": T0},
        )
    engine.dispose()


def _recorded(url: str) -> list[str]:
    engine = _engine(url)
    with engine.connect() as conn:
        heads = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_heads()
    engine.dispose()
    return list(heads)


def _tables(url: str) -> MetaData:
    engine = _engine(url)
    found = MetaData()
    found.reflect(engine)
    engine.dispose()
    return found


def test_the_newest_revision_makes_exactly_the_models_tables(store_url: str) -> None:
    store = Store(store_url)
    assert store.schema.state is SchemaState.EMPTY
    assert store.schema.pending == tuple(revision for revision, _ in revisions())
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, _Base.metadata)
        operations = produce_migrations(context, _Base.metadata).upgrade_ops
        assert operations is not None
        missing = render_python_code(operations)
    store.close()
    assert differences == [], f"the models changed without a revision; it needs:\n{missing}"
    assert _recorded(store_url) == [HEAD]


def test_the_first_revision_is_the_schema_of_the_previous_release(store_url: str) -> None:
    _previous_release(store_url)
    previous = _tables(store_url)
    assert set(previous.tables) == {"jobs", "tasks", "rounds", "metrics", "round_notes", "blobs"}
    engine = _engine(store_url)
    previous.drop_all(engine)
    with engine.begin() as conn:
        _migrate(conn, "0001")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, previous) == []
    engine.dispose()


def test_a_database_of_the_previous_release_is_upgraded_in_place(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _previous_release(store_url)
    with caplog.at_level(logging.INFO, logger="fedsilo.orchestrator"):
        store = Store(store_url)
    try:
        assert store.schema.state is SchemaState.UNRECORDED
        after = tuple(revision for revision, _ in revisions()[1:])
        assert (store.schema.revision, store.schema.pending) == ("0001", after)
        assert f"from schema revision 0001 (recognised by its tables) to {HEAD}" in caplog.text
        job = store.job("job-1")
        assert job is not None
        assert (job.state, job.current_round, job.model_digest) == ("succeeded", 2, "m" * 64)
        assert json.loads(job.spec_json)["strategy"] == {"name": "fedavg"}
        assert [(r.round, r.global_digest) for r in store.rounds("job-1")] == [
            (1, "1" * 64),
            (2, "2" * 64),
        ]
        assert len(store.metrics("job-1")) == 4
        assert sorted(store.uploads("job-1"))[0] == (1, "hospital-a", "1a" * 32)
        assert [(n.silo, n.kind) for n in store.notes("job-1")] == [("hospital-b", "clipped")]
        store.add_blob("m" * 64, 1, "someone-else")  # the first record stays, 64-bit size
        # the new table works beside the old rows
        assert store.checkpoint("job-1") is None
        store.start_round("job-1", 3)
        store.finish_round("job-1", 3, "3" * 64, checkpoint=(None, '{"round": 3}'))
        saved = store.checkpoint("job-1")
        assert saved is not None
        assert (saved.round, saved.state_json) == (3, '{"round": 3}')
        store.add_note("job-1", 3, "hospital-a", "replay", "sent again")
        assert len(store.notes("job-1")) == 2
    finally:
        store.close()
    assert _recorded(store_url) == [HEAD]
    again = Store(store_url)
    assert (again.schema.state, again.schema.pending) == (SchemaState.CURRENT, ())
    again.close()


def test_an_upgrade_that_fails_half_way_changes_nothing(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _previous_release(store_url)

    def fails_after(connection: Connection, destination: str) -> None:
        _migrate(connection, destination)
        raise RuntimeError("the machine went down")

    monkeypatch.setattr(migrations, "_migrate", fails_after)
    with pytest.raises(RuntimeError):
        Store(store_url)
    assert _recorded(store_url) == []
    assert "checkpoints" not in _tables(store_url).tables
    monkeypatch.undo()
    store = Store(store_url)
    assert store.schema.state is SchemaState.UNRECORDED
    assert store.job("job-1") is not None
    store.close()


def test_tables_made_before_revisions_with_checkpoints_are_recorded_as_they_are(
    store_url: str,
) -> None:
    engine = _engine(store_url)
    # what the store did on opening before revisions, once it had checkpoints (0002)
    before = [t for t in _Base.metadata.sorted_tables if t.name not in REVISION_0003_TABLES]
    _Base.metadata.create_all(engine, tables=before)
    engine.dispose()
    store = Store(store_url)
    assert (store.schema.state, store.schema.revision) == (SchemaState.UNRECORDED, "0002")
    assert store.schema.pending == tuple(revision for revision, _ in revisions()[2:])
    store.close()
    assert _recorded(store_url) == [HEAD]


def test_an_older_recorded_revision_is_upgraded(store_url: str) -> None:
    engine = _engine(store_url)
    with engine.begin() as conn:
        _migrate(conn, "0001")
        conn.execute(
            text(
                "INSERT INTO jobs (id, name, submitter, spec_json, bundle_digest, state, "
                "current_round, created_at) VALUES "
                "('job-9', 'old', 'bob', '{}', :bundle, 'queued', 0, :t)"
            ),
            {"bundle": "b" * 64, "t": T0},
        )
    engine.dispose()
    store = Store(store_url)
    try:
        assert (store.schema.state, store.schema.revision) == (SchemaState.BEHIND, "0001")
        assert [job.id for job in store.unfinished_jobs()] == ["job-9"]
        store.start_round("job-9", 1)
        store.finish_round("job-9", 1, "1" * 64, checkpoint=("s" * 64, "{}"))
        assert store.checkpoint("job-9") is not None
    finally:
        store.close()
    assert _recorded(store_url) == [HEAD]


def test_a_database_a_newer_fedsilo_wrote_is_refused_and_left_alone(store_url: str) -> None:
    Store(store_url).close()
    engine = _engine(store_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
        conn.execute(text("CREATE TABLE shards (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    url = store_url
    if make_url(store_url).drivername.startswith("postgresql"):
        url = make_url(store_url).set(password="s3cret").render_as_string(hide_password=False)
    with pytest.raises(ConfigError) as refused:
        Store(url)
    message = str(refused.value)
    assert "schema revision 0099" in message
    assert f"fedsilo {__version__}" in message
    assert f"its newest is {HEAD}" in message
    assert "pip install -U fedsilo" in message
    assert "s3cret" not in message
    assert str(make_url(store_url).database) in message
    assert _recorded(store_url) == ["0099"]
    assert "shards" in _tables(store_url).tables


def test_tables_no_revision_made_are_refused(store_url: str) -> None:
    _previous_release(store_url)
    engine = _engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE round_notes DROP COLUMN kind"))
    engine.dispose()
    with pytest.raises(ConfigError, match=r"no column round_notes\.kind.*backup"):
        Store(store_url)
    assert _recorded(store_url) == []
    assert "checkpoints" not in _tables(store_url).tables


def test_a_recorded_database_changed_by_hand_is_refused(store_url: str) -> None:
    Store(store_url).close()
    engine = _engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE checkpoints ADD COLUMN note TEXT"))
    engine.dispose()
    with pytest.raises(
        ConfigError, match=rf"recorded at revision {HEAD}, with an unknown column checkpoints\.note"
    ):
        Store(store_url)


OPEN = """
import sys
from fedsilo.orchestrator._db import Store
store = Store(sys.argv[1])
print(store.schema.state.value)
store.close()
"""


def test_orchestrators_opening_one_new_database_at_once_build_it_once(store_url: str) -> None:
    opening = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [process.communicate(timeout=120) for process in opening]
    assert [p.returncode for p in opening] == [0, 0, 0], [err for _, err in results]
    states = sorted(out.strip() for out, _ in results)
    assert states == ["current", "current", "empty"]
    assert _recorded(store_url) == [HEAD]
