"""A real federation whose orchestrator keeps its state in PostgreSQL.

The orchestrator process is started by ``fedsilo up`` with ``FEDSILO_DATABASE_URL``
naming a new database on a throwaway PostgreSQL server (see ``tests/postgres.py``); the
job must give the model it gives on SQLite, and its record must outlive the orchestrator.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.jobs import load_job
from fedsilo.orchestrator._db import Store
from fedsilo.pipelines import simulate, workspace_inputs
from fedsilo.runtime import down, up
from fedsilo.tensors import load_parameters
from tests import postgres
from tests.integration.conftest import SILOS, Federation, write_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    with postgres.server() as url:
        yield url


def test_a_job_runs_with_its_state_in_postgresql_and_outlives_the_orchestrator(
    postgres_server: str, fresh: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.new_database(postgres_server)
    monkeypatch.setenv("FEDSILO_DATABASE_URL", url)
    up(fresh.root)
    job_file = write_job(fresh.scratch / "pg", rounds=2)
    spec, code_dir = load_job(job_file)
    with OrchestratorClient(fresh.submitter) as client:
        job_id = client.submit(spec, code_dir, signing_key=fresh.key)
        info = client.wait(job_id, timeout=120)
        assert info.state is JobState.SUCCEEDED, info.error
        model = fresh.scratch / "model.safetensors"
        client.download_model(job_id, model)
    down(fresh.root)

    # Nothing went to the default SQLite file: the state is in the server's database.
    orchestrator_storage = fresh.workspace.kit("orchestrator").storage_path
    assert not (orchestrator_storage / "orchestrator.db").exists()
    store = Store(url)
    try:
        row = store.job(job_id)
        assert row is not None and row.state == "succeeded"
        assert [r.round for r in store.rounds(job_id)] == [0, 1, 2]  # 0: the initial model
        assert {m.silo for m in store.metrics(job_id)} == set(SILOS)
    finally:
        store.close()

    sim = simulate(
        spec, code_dir, workspace_inputs(fresh.root, spec), work_root=fresh.scratch / "sim"
    )
    federated = load_parameters(model)
    for name, value in sim.parameters.items():
        np.testing.assert_array_equal(federated[name], value)

    # A new orchestrator process on the same database still has the job and its history.
    up(fresh.root)
    with OrchestratorClient(fresh.submitter) as client:
        again = client.job(job_id)
    assert again.state is JobState.SUCCEEDED
    assert [r.round for r in again.history] == [1, 2]
    for before, after in zip(info.history, again.history, strict=True):
        assert after.evaluate == before.evaluate
