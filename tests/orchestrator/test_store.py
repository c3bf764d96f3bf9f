"""``Store``: the orchestrator's state, the same on SQLite and on PostgreSQL."""

from __future__ import annotations

import time

import pytest

from fedsilo.errors import ConfigError
from fedsilo.orchestrator._db import JobRow, Store, TaskRow, database_url, redacted

LONGEST_NAME = "j" * 64  # a job name's longest form; silo names are at most 63 characters
LONGEST_SILO = "s" * 63


def _job(job_id: str, *, state: str = "queued", name: str = "job") -> JobRow:
    return JobRow(
        id=job_id,
        name=name,
        submitter="alice",
        spec_json='{"name": "job"}',
        bundle_digest="d" * 64,
        state=state,
        created_at=time.time(),
    )


def _task(task_id: str, job_id: str, silo: str, *, round_: int = 1) -> TaskRow:
    return TaskRow(
        id=task_id,
        job_id=job_id,
        silo=silo,
        kind="preprocess",  # the longest kind's length is what the column must hold
        round=round_,
        state="pending",
        message_json="{}",
        created_at=time.time(),
    )


def test_a_job_its_tasks_rounds_and_metrics_survive_reopening(store_url: str) -> None:
    store = Store(store_url)
    store.add_job(_job("job-1", name=LONGEST_NAME))
    store.add_tasks([_task("t-1", "job-1", LONGEST_SILO), _task("t-2", "job-1", "silo-b")])
    store.finish_task("t-1", ok=True, result_json='{"ok": true}', assigned_at=time.time())
    store.finish_task("t-2", ok=False, result_json='{"ok": false}')
    store.start_round("job-1", 1)
    store.finish_round(
        "job-1",
        1,
        "g" * 64,
        [(1, LONGEST_SILO, "train", {"loss": 0.5}), (0, "silo-b", "evaluate", {"acc": 0.1})],
    )
    # A metric recorded again (a silo's late evaluation) replaces the first, also when
    # one call records the same key twice (the last one stands).
    store.add_metrics(
        "job-1", [(0, "silo-b", "evaluate", {"acc": 0.3}), (0, "silo-b", "evaluate", {"acc": 0.2})]
    )
    store.update_job("job-1", state="succeeded", current_round=1, model_digest="m" * 64)
    store.close()

    again = Store(store_url)
    try:
        job = again.job("job-1")
        assert job is not None
        assert (job.name, job.state, job.current_round) == (LONGEST_NAME, "succeeded", 1)
        with again.session() as s:
            tasks = {t.id: t for t in s.query(TaskRow).all()}
        assert tasks["t-1"].state == "done" and tasks["t-1"].assigned_at is not None
        assert tasks["t-2"].state == "failed"
        [round_] = again.rounds("job-1")
        assert round_.global_digest == "g" * 64 and round_.finished_at is not None
        metrics = {(m.round, m.silo, m.phase): m.metrics_json for m in again.metrics("job-1")}
        assert metrics == {
            (0, "silo-b", "evaluate"): '{"acc": 0.2}',
            (1, LONGEST_SILO, "train"): '{"loss": 0.5}',
        }
    finally:
        again.close()


def test_jobs_are_listed_newest_first_and_unfinished_ones_found_at_restart(
    store_url: str,
) -> None:
    store = Store(store_url)
    try:
        for number, state in enumerate(("succeeded", "running", "queued")):
            row = _job(f"job-{number}", state=state)
            row.created_at = 1000.0 + number
            store.add_job(row)
        store.add_tasks([_task("t-open", "job-1", "silo-a")])
        assert [j.id for j in store.jobs()] == ["job-2", "job-1", "job-0"]
        assert [j.id for j in store.jobs(limit=1)] == ["job-2"]
        assert [j.id for j in store.unfinished_jobs()] == ["job-1", "job-2"]  # oldest first
        store.close_open_tasks()
        with store.session() as s:
            assert s.get(TaskRow, "t-open").state == "failed"  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_blob_is_recorded_once_whatever_its_size(store_url: str) -> None:
    store = Store(store_url)
    try:
        big = 5 * 2**30  # more than a 32-bit column holds
        store.add_blob("b" * 64, big, "silo-a")
        store.add_blob("b" * 64, 1, "silo-b")  # the same content again: the first record stays
        from fedsilo.orchestrator._db import BlobRow

        with store.session() as s:
            row = s.get(BlobRow, "b" * 64)
            assert row is not None and (row.size, row.owner) == (big, "silo-a")
    finally:
        store.close()


def test_the_store_says_which_database_it_is(store_url: str) -> None:
    store = Store(store_url)
    try:
        assert store.dialect == store_url.split(":")[0]
    finally:
        store.close()


def test_a_plain_postgresql_url_gets_psycopg_3() -> None:
    assert database_url("postgresql://u:pw@db:5432/fl") == "postgresql+psycopg://u:pw@db:5432/fl"
    assert database_url("postgresql+psycopg2://u@db/fl") == "postgresql+psycopg2://u@db/fl"
    assert database_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redacted("postgresql://u:secret@db/fl") == "postgresql://u:***@db/fl"


def test_a_url_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="is not a SQLAlchemy URL") as caught:
        Store("orchestrator.db")
    assert caught.value.field == "database_url"


def test_a_missing_driver_names_the_extra_to_install() -> None:
    with pytest.raises(ConfigError, match=r"no database driver for .*fedsilo\[postgres\]"):
        Store("postgresql+pg8000://u:secret@127.0.0.1:1/fl")


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(ConfigError, match="cannot open the orchestrator's database") as caught:
        Store("postgresql://fl:secret@127.0.0.1:1/fl?connect_timeout=2")
    message = str(caught.value)
    assert "secret" not in message and "***" in message
    assert "--database-url" in message
