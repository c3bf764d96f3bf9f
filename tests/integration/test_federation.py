"""A real federation: orchestrator and three agents as processes, mutual TLS on loopback."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.config import load_kit
from fedsilo.errors import (
    CertificateRefused,
    OrchestratorUnavailable,
    TransportError,
    WorkspaceError,
)
from fedsilo.jobs import load_job
from fedsilo.pipelines import simulate, workspace_inputs
from fedsilo.provisioning import provision
from fedsilo.runtime import processes, up
from fedsilo.silo._errors import ErrorStore
from fedsilo.tensors import load_parameters
from tests.integration.conftest import SILOS, Federation, write_federation, write_job

pytestmark = pytest.mark.integration


def test_fl_job_gives_the_model_the_simulation_gives(running: Federation) -> None:
    job_file = write_job(running.scratch / "match", rounds=3)
    spec, code_dir = load_job(job_file)
    with OrchestratorClient(running.submitter) as client:
        job_id = client.submit(spec, code_dir, signing_key=running.key)
        followed: list[JobInfo] = []
        info = client.wait(job_id, timeout=120, on_update=followed.append)
        assert info.state is JobState.SUCCEEDED, info.error
        model = running.scratch / "model.safetensors"
        digest = client.download_model(job_id, model)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest

    # the model is small: each round's update left its silo with the result, not uploaded
    log = read_log(audit_path(running.workspace.kit("silo-a").storage_path))
    sent = [e.data for e in log if e.event == "output.uploaded" and e.data["job_id"] == job_id]
    assert [e["round"] for e in sent if e.get("inline")] == [1, 2, 3]

    # followed while it ran, the job showed each round as its finished record does: a
    # round's evaluation, which comes with the next round, reached the round shown earlier
    assert len(followed) > 3
    for seen in followed:
        for r in seen.history[:-1]:
            assert r == info.history[r.round - 1], f"round {r.round} as shown while running"

    # every round has every silo's evaluation of the global model and its training metrics
    assert [r.round for r in info.history] == [1, 2, 3]
    for r in info.history:
        assert set(r.evaluate) == set(SILOS)
        assert set(r.train) == set(SILOS)
        assert 0.0 <= r.evaluate_aggregate["accuracy"] <= 1.0

    sim = simulate(
        spec, code_dir, workspace_inputs(running.root, spec), work_root=running.scratch / "sim"
    )
    federated = load_parameters(model)
    assert set(federated) == set(sim.parameters)
    for name, value in sim.parameters.items():
        # bit for bit: the orchestrator folds updates in the job's silo order, whatever
        # order they arrive in, and the workers train as the simulation does
        np.testing.assert_array_equal(federated[name], value)
    for fed_round, sim_round in zip(info.history, sim.history, strict=True):
        for silo in SILOS:
            assert fed_round.evaluate[silo]["accuracy"] == pytest.approx(
                sim_round.evaluate[silo]["accuracy"], abs=1e-6
            )
    accuracies = [r.evaluate_aggregate["accuracy"] for r in info.history]
    assert accuracies[-1] > accuracies[0] and accuracies[-1] > 0.5


def test_status_shows_every_silo_online(running: Federation) -> None:
    with OrchestratorClient(running.submitter) as client:
        report = client.status()
    assert report.federation == "itest"
    assert {s.name: s.online for s in report.silos} == dict.fromkeys(SILOS, True)


def test_check_runs_a_noop_job_through_every_silo(running: Federation) -> None:
    with OrchestratorClient(running.submitter) as client:
        report = client.check(timeout=30)
    assert [line.silo for line in report.silos] == list(SILOS)
    for line in report.silos:
        assert line.reachable and line.ran, line.error
        assert line.round_trip_seconds is not None and 0 < line.round_trip_seconds < 30


def test_a_second_up_refuses(running: Federation) -> None:
    before = {p.pid for p in processes(running.root)}
    with pytest.raises(WorkspaceError, match="already running"):
        up(running.root)
    assert {p.pid for p in processes(running.root) if p.alive} == before


def test_a_dataset_a_silo_lacks_fails_before_round_one(running: Federation) -> None:
    job_file = write_job(running.scratch / "missing", silo_inputs="{silo-b: {train: no-such-data}}")
    spec, code_dir = load_job(job_file)
    with OrchestratorClient(running.submitter) as client:
        info = client.wait(client.submit(spec, code_dir, signing_key=running.key), timeout=60)
    assert info.state is JobState.FAILED
    assert "silo-b" in (info.error or "") and "no-such-data" in (info.error or "")
    assert info.current_round == 0 and info.history == []


def test_task_code_errors_reach_the_submitter_as_an_error_id(running: Federation) -> None:
    folder = running.scratch / "broken"
    write_job(folder)
    task = folder / "task" / "task.py"
    task.write_text(
        task.read_text().replace(
            'return {"num_samples": len(x)}', 'raise ValueError("bad batch in train")'
        )
    )
    spec, code_dir = load_job(folder / "job.yaml")
    with OrchestratorClient(running.submitter) as client:
        info = client.wait(client.submit(spec, code_dir, signing_key=running.key), timeout=60)
    assert info.state is JobState.FAILED
    error = info.error or ""
    assert "round 1" in error and "the task code raised ValueError" in error
    assert "bad batch in train" not in error  # it stays in the silo, under the error id
    found = re.search(r"fedsilo silo errors (e-[0-9a-f]{12})", error)
    assert found is not None, error
    kept = [ErrorStore(running.workspace.kit(s).storage_path, s).recent() for s in SILOS]
    assert any(
        e.id == found.group(1) and "bad batch in train" in e.message for k in kept for e in k
    )


def test_a_client_certificate_from_another_ca_is_refused(
    running: Federation, tmp_path: Path
) -> None:
    other = provision(write_federation(tmp_path, "other"), tmp_path / "other")
    foreign = load_kit(other.kit_dir("alice"))
    pointed = foreign.model_copy(
        update={"orchestrator_port": running.submitter.orchestrator_port}
    ).located(foreign.kit_dir)
    refused = pytest.raises(CertificateRefused, match="does not hold a certificate of this kit")
    with OrchestratorClient(pointed, timeout=5) as client, refused:
        client.status()


def test_a_submitter_certificate_cannot_act_as_a_silo(running: Federation) -> None:
    with OrchestratorClient(running.submitter, timeout=5) as client:
        with pytest.raises(CertificateRefused, match="needs a silo"):
            client.next_task(0)
        with pytest.raises(CertificateRefused, match="needs a silo"):
            client.upload_params(Path(__file__))


def test_a_corrupted_upload_is_refused_and_retried(running: Federation) -> None:
    class Flaky(OrchestratorClient):
        def __init__(self, *args: object, fail: int, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.fail = fail
            self.attempts = 0

        def _body(self, parts: list[bytes | memoryview], attempt: int) -> list[bytes | memoryview]:
            self.attempts += 1
            return [bytes(parts[0])[:-1] + b"\x00"] if attempt <= self.fail else parts

    payload = b"model bytes " + str(time.time()).encode()
    digest = hashlib.sha256(payload).hexdigest()
    blobs = running.workspace.kit("orchestrator").storage_path / "blobs"
    with Flaky(running.workspace.kit("silo-a"), fail=1) as client:
        assert client._upload("/v1/agent/uploads", payload) == digest
        assert client.attempts == 2
    assert (blobs / digest).read_bytes() == payload

    other = payload + b"!"
    with (
        Flaky(running.workspace.kit("silo-a"), fail=99) as client,
        pytest.raises(TransportError, match="does not match its digest"),
    ):
        client._upload("/v1/agent/uploads", other)
    assert not (blobs / hashlib.sha256(other).hexdigest()).exists()


def test_cli_status_and_job_show(running: Federation) -> None:
    fedsilo = [sys.executable, "-m", "fedsilo"]
    out = subprocess.run(
        [*fedsilo, "status", str(running.root)], capture_output=True, text=True, check=True
    ).stdout
    for silo in SILOS:
        assert silo in out
    assert "online" in out and "offline" not in out


def test_submit_while_the_orchestrator_is_down_says_how_to_start_it(tmp_path: Path) -> None:
    from tests.integration.conftest import make_federation

    fed = make_federation(tmp_path, "idle")
    spec, code_dir = load_job(write_job(fed.scratch / "job"))
    with (
        OrchestratorClient(fed.submitter, timeout=5) as client,
        pytest.raises(OrchestratorUnavailable, match="fedsilo up"),
    ):
        client.submit(spec, code_dir, signing_key=fed.key)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsilo",
            "submit",
            str(fed.scratch / "job" / "job.yaml"),
            "-w",
            str(fed.root),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "fedsilo up" in done.stderr and "Traceback" not in done.stderr


def test_a_silo_that_disconnects_mid_round_is_named(fresh: Federation) -> None:
    up(fresh.root)
    spec, code_dir = load_job(
        write_job(fresh.scratch / "slow", rounds=2, extra=", extra: {sleep: 3}", round_timeout="8")
    )
    with OrchestratorClient(fresh.submitter) as client:
        job_id = client.submit(spec, code_dir, signing_key=fresh.key)
        deadline = time.monotonic() + 60
        while client.job(job_id).current_round < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        victim = next(p for p in processes(fresh.root) if p.name == "silo-b")
        subprocess.run(["kill", "-9", str(victim.pid)], check=True)
        started = time.monotonic()
        info = client.wait(job_id, timeout=60)
    assert info.state is JobState.FAILED
    assert "silo-b" in (info.error or "") and "disconnected" in (info.error or "")
    assert time.monotonic() - started < 15
