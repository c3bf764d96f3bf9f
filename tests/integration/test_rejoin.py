"""A silo's agent that dies mid-job, through the real processes.

Killed with SIGKILL in the middle of a round and started again at once, the agent is handed
its open task again, takes the job up (approval, preprocessing, its worker) and the job
ends with the same model as a run nobody interrupted. Stopped for good, the job goes on
without it if the job's ``min_silos`` allows, naming it in each round it missed; below
that, the job fails naming the silos it lacks.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.config import local_cores
from fedsilo.jobs import load_job
from fedsilo.runtime import down, processes, up
from tests.integration.conftest import SILOS, Federation, make_federation, write_job

pytestmark = pytest.mark.integration

SLOW = ", extra: {sleep: 1.5}"  # each round's training takes long enough to be cut


@dataclass
class Agents:
    """The federation, and the agents this test started again itself."""

    fed: Federation
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def kill(self, silo: str) -> None:
        own = self.started.pop(silo, None)
        if own is not None:
            own.kill()
            own.wait()
            return
        agent = next(p for p in processes(self.fed.root) if p.name == silo and p.alive)
        os.kill(agent.pid, signal.SIGKILL)

    def start(self, silo: str) -> None:
        cores = str(local_cores(len(SILOS)))
        kit = str(self.fed.workspace.kit_dir(silo))
        with (self.fed.root / "logs" / f"{silo}-again.log").open("ab") as log:
            self.started[silo] = subprocess.Popen(
                [sys.executable, "-m", "fedsilo", "silo", "start", "--kit", kit, "--cores", cores],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.fed.root,
            )

    def online(self, silo: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with OrchestratorClient(self.fed.submitter) as client:
            while time.monotonic() < deadline:
                if any(s.name == silo and s.online for s in client.status().silos):
                    return
                time.sleep(0.3)
        raise AssertionError(f"{silo} did not come back")


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    fed = make_federation(tmp_path_factory.mktemp("rejoin"), "rejoin")
    up(fed.root)
    held = Agents(fed)
    try:
        yield held
    finally:
        for proc in held.started.values():
            proc.kill()
            proc.wait()
        down(fed.root)


def _submit(agents: Agents, folder: Path, **overrides: str) -> str:
    spec, code = load_job(write_job(folder, rounds=3, extra=SLOW, **overrides))
    with OrchestratorClient(agents.fed.submitter) as client:
        return client.submit(spec, code, signing_key=agents.fed.key)


def _at_round(agents: Agents, job_id: str, round_: int) -> None:
    """Wait until the job trains round ``round_``."""
    deadline = time.monotonic() + 120
    with OrchestratorClient(agents.fed.submitter) as client:
        while time.monotonic() < deadline:
            info = client.job(job_id)
            assert not info.state.finished, info.error
            if info.current_round >= round_:
                time.sleep(0.5)  # the silos have their fit tasks
                return
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached round {round_}")


def _wait(agents: Agents, job_id: str) -> JobInfo:
    with OrchestratorClient(agents.fed.submitter) as client:
        return client.wait(job_id, timeout=240)


def _model(agents: Agents, job_id: str, folder: Path) -> str:
    out = folder / f"{job_id}.safetensors"
    with OrchestratorClient(agents.fed.submitter) as client:
        client.download_model(job_id, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_an_agent_killed_mid_round_takes_the_job_up_again_with_the_same_model(
    agents: Agents, tmp_path: Path
) -> None:
    reference = _submit(agents, tmp_path / "reference")
    assert _wait(agents, reference).state is JobState.SUCCEEDED
    job_id = _submit(agents, tmp_path / "cut")
    _at_round(agents, job_id, 2)
    agents.kill("silo-b")
    agents.start("silo-b")
    info = _wait(agents, job_id)
    assert info.state is JobState.SUCCEEDED, info.error
    assert _model(agents, job_id, tmp_path) == _model(agents, reference, tmp_path)
    notes = [(r.round, n.silo, n.kind) for r in info.history for n in r.notes]
    assert (2, "silo-b", "rejoined") in notes
    silo_log = read_log(audit_path(agents.fed.workspace.kit("silo-b").storage_path))
    assert any(e.event == "job.rejoined" and e.data["job_id"] == job_id for e in silo_log)
    orchestrator_log = read_log(audit_path(agents.fed.workspace.kit("orchestrator").storage_path))
    assert any(e.event == "silo.restarted" and e.data["silo"] == "silo-b" for e in orchestrator_log)


def test_below_min_silos_the_job_fails_naming_the_silos_it_lacks(
    agents: Agents, tmp_path: Path
) -> None:
    agents.online("silo-b")
    job_id = _submit(agents, tmp_path, min_silos="2", round_timeout="15")
    _at_round(agents, job_id, 1)
    agents.kill("silo-b")
    agents.kill("silo-c")
    info = _wait(agents, job_id)
    assert info.state is JobState.FAILED
    assert info.error is not None
    assert "1 of 3 silos answered, fewer than the job's min_silos of 2" in info.error
    assert "'silo-b'" in info.error and "'silo-c'" in info.error
    agents.start("silo-b")
    agents.start("silo-c")
    agents.online("silo-b")
    agents.online("silo-c")


def test_a_silo_stopped_for_good_is_left_out_of_the_rounds_it_misses(
    agents: Agents, tmp_path: Path
) -> None:
    job_id = _submit(agents, tmp_path, min_silos="2", round_timeout="15")
    _at_round(agents, job_id, 2)
    agents.kill("silo-c")
    info = _wait(agents, job_id)
    assert info.state is JobState.SUCCEEDED, info.error
    assert info.has_model
    by_round = {r.round: r for r in info.history}
    assert set(by_round[1].train) == set(SILOS)
    for round_ in (2, 3):
        assert set(by_round[round_].train) == {"silo-a", "silo-b"}
        missed = [n for n in by_round[round_].notes if n.kind == "missed"]
        assert missed and {n.silo for n in missed} == {"silo-c"}, by_round[round_].notes
        assert "within 15 s" in missed[0].text  # disconnected, and not back by the deadline
    agents.start("silo-c")
    agents.online("silo-c")
