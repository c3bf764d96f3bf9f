"""MLflow's schema migrations and the orchestrator's never run at once in one process.

Alembic keeps the running migration in process-wide proxies: on two threads, each
migration's statements could run on the other's database (seen as ``no such table``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from fedsilo._migrating import MIGRATIONS
from fedsilo.orchestrator._db import Store
from fedsilo.tracking._mlflow import mlflow_client


def _waits_for_the_lock(open_store: threading.Thread) -> bool:
    """Whether ``open_store`` only finishes once this thread lets go of the lock."""
    with MIGRATIONS:
        open_store.start()
        open_store.join(timeout=1.0)
        waited = open_store.is_alive()
    open_store.join(timeout=120)
    return waited and not open_store.is_alive()


def test_a_new_mlflow_store_migrates_under_the_lock(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opened = threading.Thread(target=lambda: mlflow_client(uri).search_experiments())
    assert _waits_for_the_lock(opened)


def test_a_new_orchestrator_database_migrates_under_the_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orchestrator.db'}"
    opened = threading.Thread(target=lambda: Store(url).close())
    assert _waits_for_the_lock(opened)


def test_both_opened_at_once_each_get_their_own_tables(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def mlflow() -> None:
        try:
            mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
        except BaseException as exc:
            errors.append(exc)

    tracking = threading.Thread(target=mlflow)
    tracking.start()
    n = 0
    while tracking.is_alive() and n < 50:
        n += 1
        Store(f"sqlite:///{tmp_path / f'orchestrator-{n}.db'}").close()
    tracking.join()
    assert not errors
