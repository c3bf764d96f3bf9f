"""One bad record never stops ``fedsilo status``, ``job list`` or ``job show``.

The records are written to the running orchestrator's own database, as its round loop
writes them: two silos that each reported a finite metric of 1.5e308 (whose plain
weighted mean overflows to infinity), and records an older version may have left
(``Infinity``, ``NaN`` or ``null`` for a metric, a spec that no longer validates, a
state this version does not know). The real CLI then asks the real orchestrator.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from fedsilo.jobs import load_job
from fedsilo.orchestrator._db import JobRow, Store
from tests.fuzz.conftest import SILOS, Servers
from tests.fuzz.test_missing import fedsilo
from tests.integration.conftest import write_job

pytestmark = pytest.mark.integration

HUGE = 1.5e308


@pytest.fixture(scope="module")
def records(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("records")
    spec, _ = load_job(write_job(folder, rounds=1, silos=f"[{', '.join(SILOS)}]"))
    storage = servers.workspace.kit("orchestrator").storage_path
    store = Store(f"sqlite:///{storage / 'orchestrator.db'}")
    huge, legacy = f"huge-{uuid.uuid4().hex[:8]}", f"legacy-{uuid.uuid4().hex[:8]}"
    now = time.time()
    try:
        store.add_job(_row(huge, spec.model_dump_json(), "succeeded", now))
        store.add_metrics(
            huge,
            [
                (1, "silo-a", "train", {"loss": HUGE, "num_samples": 10.0}),
                (1, "silo-b", "train", {"loss": HUGE, "num_samples": 30.0}),
                (1, "silo-a", "evaluate", {"accuracy": HUGE, "num_samples": 10.0}),
                (1, "silo-b", "evaluate", {"accuracy": HUGE, "num_samples": 30.0}),
            ],
        )
        stale = json.dumps({"name": "legacy", "silos": ["silo-a"], "rounds": 2, "gone": 1})
        store.add_job(_row(legacy, stale, "paused", now + 1))
        store.add_metrics(legacy, [(1, "silo-a", "evaluate", {"accuracy": 0.5})])
        with store.engine.begin() as db:  # what older versions wrote, bypassing today's checks
            from sqlalchemy import text

            db.execute(
                text("UPDATE metrics SET metrics_json = :v WHERE job_id = :j"),
                {
                    "v": '{"accuracy": Infinity, "loss": NaN, "f1": null, "num_samples": 5}',
                    "j": legacy,
                },
            )
            db.execute(
                text(
                    "INSERT INTO metrics (job_id, round, silo, phase, metrics_json) "
                    "VALUES (:j, 1, 'silo-b', 'evaluate', 'not json at all')"
                ),
                {"j": legacy},
            )
    finally:
        store.close()
    return {"huge": huge, "legacy": legacy}


def _row(job_id: str, spec_json: str, state: str, created: float) -> JobRow:
    return JobRow(
        id=job_id,
        name=job_id.split("-")[0],
        submitter="alice",
        spec_json=spec_json,
        bundle_digest="0" * 64,
        state=state,
        current_round=1,
        created_at=created,
        finished_at=created,
    )


def _ok(workspace: Path, *args: str) -> str:
    """Run ``fedsilo ARGS`` on ``workspace``; its output, once it succeeded."""
    where = (str(workspace),) if args[0] == "status" else ("-w", str(workspace))
    done = fedsilo(workspace, *args, *where)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def test_status_and_job_list_answer_with_every_job(
    servers: Servers, records: dict[str, str]
) -> None:
    root = servers.workspace.root
    report = json.loads(_ok(root, "status", "--json"))
    ids = {j["id"] for j in report["jobs"]}
    assert set(records.values()) <= ids
    listed = json.loads(_ok(root, "job", "list", "--json"))
    assert set(records.values()) <= {j["id"] for j in listed}
    table = _ok(root, "job", "list")
    assert all(job_id in table for job_id in records.values())
    assert all(job_id in _ok(root, "status") for job_id in records.values())


def test_an_average_of_huge_metrics_stays_finite(servers: Servers, records: dict[str, str]) -> None:
    root = servers.workspace.root
    info = json.loads(_ok(root, "job", "show", records["huge"], "--json"))
    (round_,) = info["history"]
    assert round_["evaluate_aggregate"]["accuracy"] == pytest.approx(HUGE)
    assert round_["evaluate_aggregate"]["num_samples"] == 40
    assert round_["train"]["silo-b"]["loss"] == HUGE
    assert records["huge"] in _ok(root, "job", "show", records["huge"])


def test_a_record_an_older_version_wrote_is_shown_as_far_as_it_reads(
    servers: Servers, records: dict[str, str]
) -> None:
    root = servers.workspace.root
    info = json.loads(_ok(root, "job", "show", records["legacy"], "--json"))
    assert info["silos"] == ["silo-a"] and info["rounds"] == 2
    assert info["state"] == "failed" and "paused" in info["error"]
    (round_,) = info["history"]
    assert round_["evaluate"] == {"silo-a": {"num_samples": 5.0}, "silo-b": {}}
    assert records["legacy"] in _ok(root, "job", "show", records["legacy"])
