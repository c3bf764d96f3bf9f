"""The orchestrator killed mid-job and started again, through the real processes.

The job goes on at its last closed round: the round in flight is redone, the server
optimizer's moments come back from the checkpoint, and the final model is the one an
uninterrupted job makes. A job under secure aggregation sets its masks up again, with
new keys, and redoes the round in flight under them. A job that cannot go on (a literal
pipeline) fails saying why, and its silos are told to let it go.
"""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.errors import TransportError
from fedsilo.jobs import load_job
from fedsilo.pipelines import simulate, workspace_inputs
from fedsilo.runtime import down, processes, up
from fedsilo.tensors import load_parameters
from tests import postgres
from tests.integration.conftest import Federation, make_federation, write_job

pytestmark = pytest.mark.integration

SLOW = ", extra: {sleep: 1.5}"
FEDADAM = "{name: fedadam, server_lr: 0.05}"


class Orchestrator:
    """The federation's orchestrator, killed and started again by the test."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.again: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        if self.again is not None:
            self.again.kill()
            self.again.wait()
            self.again = None
            return
        proc = next(p for p in processes(self.fed.root) if p.name == "orchestrator" and p.alive)
        os.kill(proc.pid, signal.SIGKILL)

    def start(self) -> None:
        kit = str(self.fed.workspace.kit_dir("orchestrator"))
        with (self.fed.root / "logs" / "orchestrator-again.log").open("ab") as log:
            self.again = subprocess.Popen(
                [sys.executable, "-m", "fedsilo", "orchestrator", "start", "--kit", kit],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.fed.root,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # a TLS connection cut while the new orchestrator starts can leave its socket
            # to the garbage collector (inside httpcore): collected here, not warned later
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                try:
                    with OrchestratorClient(self.fed.submitter, timeout=5) as client:
                        client.whoami()
                        return
                except TransportError:
                    gc.collect()
            time.sleep(0.3)
        raise AssertionError("the orchestrator did not come back")


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, Orchestrator]]:
    fed = make_federation(tmp_path_factory.mktemp("resume"), "resume")
    up(fed.root)
    orchestrator = Orchestrator(fed)
    try:
        yield fed, orchestrator
    finally:
        if orchestrator.again is not None:
            orchestrator.again.kill()
            orchestrator.again.wait()
        down(fed.root)


def _submit(fed: Federation, folder: Path, **overrides: str) -> str:
    spec, code = load_job(write_job(folder, rounds=3, extra=SLOW, **overrides))
    with OrchestratorClient(fed.submitter) as client:
        return client.submit(spec, code, signing_key=fed.key)


def _at_round(fed: Federation, job_id: str, round_: int) -> None:
    deadline = time.monotonic() + 120
    with OrchestratorClient(fed.submitter) as client:
        while time.monotonic() < deadline:
            info = client.job(job_id)
            assert not info.state.finished, info.error
            if info.current_round >= round_:
                time.sleep(0.5)
                return
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached round {round_}")


def _wait(fed: Federation, job_id: str) -> JobInfo:
    with OrchestratorClient(fed.submitter) as client:
        return client.wait(job_id, timeout=240)


def _model(fed: Federation, job_id: str, folder: Path) -> str:
    out = folder / f"{job_id}.safetensors"
    with OrchestratorClient(fed.submitter) as client:
        client.download_model(job_id, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _cut_and_resumed(
    fed: Federation, orchestrator: Orchestrator, folder: Path, **overrides: str
) -> JobInfo:
    """Run the job once whole, then again with the orchestrator killed in round 2 and
    started again; the second ends with the first one's model, every round trained once."""
    reference = _submit(fed, folder / "reference", **overrides)
    assert _wait(fed, reference).state is JobState.SUCCEEDED
    job_id = _submit(fed, folder / "cut", **overrides)
    _at_round(fed, job_id, 2)
    orchestrator.kill()
    orchestrator.start()
    info = _wait(fed, job_id)
    assert info.state is JobState.SUCCEEDED, info.error
    assert _model(fed, job_id, folder) == _model(fed, reference, folder)
    assert [r.round for r in info.history if r.train] == [1, 2, 3]
    return info


def test_a_job_resumes_at_its_last_closed_round_with_the_same_model(
    federation: tuple[Federation, Orchestrator], tmp_path: Path
) -> None:
    fed, orchestrator = federation
    info = _cut_and_resumed(fed, orchestrator, tmp_path, strategy=FEDADAM)
    job_id = info.id
    entries = read_log(audit_path(fed.workspace.kit("orchestrator").storage_path))
    resumed = [e.data for e in entries if e.event == "job.resumed"]
    assert resumed == [{"job_id": job_id, "round": 1}]


def test_a_secure_job_resumes_under_new_masks_with_the_same_model(
    federation: tuple[Federation, Orchestrator], tmp_path: Path
) -> None:
    fed, orchestrator = federation
    info = _cut_and_resumed(fed, orchestrator, tmp_path, privacy="{secure_aggregation: {}}")
    job_id = info.id
    assert all(r.privacy["secure_aggregation_silos"] == 3 for r in info.history)
    for silo in fed.workspace.silo_names:
        entries = read_log(audit_path(fed.workspace.kit(silo).storage_path))
        setups = [
            e.data for e in entries if e.event == "secagg.setup" and e.data["job_id"] == job_id
        ]
        assert [s.get("again", False) for s in setups] == [False, True], silo


def test_a_job_that_cannot_resume_fails_saying_why(
    federation: tuple[Federation, Orchestrator], tmp_path: Path
) -> None:
    fed, orchestrator = federation
    spec, code = load_job(write_job(tmp_path, rounds=3, pipeline="literal"))
    with OrchestratorClient(fed.submitter) as client:
        job_id = client.submit(spec, code, signing_key=fed.key)
    orchestrator.kill()
    orchestrator.start()
    with OrchestratorClient(fed.submitter) as client:
        info = client.job(job_id)
    assert info.state is JobState.FAILED
    assert info.error is not None and "literal pipeline" in info.error
    assert "submit it again" in info.error


def test_a_job_resumes_with_its_state_in_postgresql(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on PostgreSQL; the resumed model equals `fedsilo sim`'s of the job."""
    with postgres.server() as server:
        monkeypatch.setenv("FEDSILO_DATABASE_URL", postgres.new_database(server))
        fed = make_federation(tmp_path_factory.mktemp("resume-pg"), "resumepg")
        up(fed.root)
        orchestrator = Orchestrator(fed)
        try:
            spec, code = load_job(write_job(fed.scratch / "job", rounds=3, extra=SLOW))
            with OrchestratorClient(fed.submitter) as client:
                job_id = client.submit(spec, code, signing_key=fed.key)
            _at_round(fed, job_id, 2)
            orchestrator.kill()
            orchestrator.start()
            info = _wait(fed, job_id)
            assert info.state is JobState.SUCCEEDED, info.error
            model = fed.scratch / "model.safetensors"
            with OrchestratorClient(fed.submitter) as client:
                client.download_model(job_id, model)
        finally:
            if orchestrator.again is not None:
                orchestrator.again.kill()
                orchestrator.again.wait()
            down(fed.root)
    sim = simulate(spec, code, workspace_inputs(fed.root, spec), work_root=fed.scratch / "sim")
    federated = load_parameters(model)
    for name, value in sim.parameters.items():
        np.testing.assert_array_equal(federated[name], value)
