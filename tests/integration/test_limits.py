"""A silo's limits, held by the kernel, tried through the real processes as a hostile job would.

A memory bomb, a fork bomb and a step past its deadline are each stopped: the job fails
with the limit in plain words, the silo's audit log records it, and the silo runs its next
job at once. Cancelling a job frees every silo within seconds; ``fedsilo check`` answers
while a job trains; jobs share a compute's capacity or wait in its queue.

The kernel tests need control groups (root on Linux): they skip without, and fail with
``FEDSILO_REQUIRE_CGROUPS=1`` (CI sets it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.jobs import load_job
from fedsilo.pipelines import simulate, workspace_inputs
from fedsilo.runtime import down, up
from fedsilo.silo._limits import Enforcement, Limiter
from fedsilo.tensors import load_parameters
from tests.integration.conftest import TASK, Federation, make_federation, write_job

pytestmark = pytest.mark.integration

# every silo's compute: 2 threads, processes capped low enough for a fork bomb to hit
COMPUTE = ", threads: 2, processes: 96"

BOMBS = """

import os


def _bomb(ctx):
    kind = ctx.hyperparameters.extra.get("bomb", "")
    if kind == "memory":
        hog = np.ones((3 << 30) // 8)  # 3 GiB, every page written
        return float(hog.sum())
    if kind == "spin":  # every core busy, for as long as it is let
        while True:
            pass
    if kind == "fork":
        for _ in range(1500):
            if os.fork() == 0:
                time.sleep(120)
                os._exit(0)
    return 0.0


_plain_train = train


def train(model, ctx):
    _bomb(ctx)
    return _plain_train(model, ctx)
"""


def _cgroups_here() -> bool:
    limiter = Limiter.detect("probe")
    try:
        return limiter.enforcement is not Enforcement.RLIMITS
    finally:
        limiter.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    if not _cgroups_here():
        if os.environ.get("FEDSILO_REQUIRE_CGROUPS") == "1":
            pytest.fail("control groups are required (FEDSILO_REQUIRE_CGROUPS=1) but unusable")
        pytest.skip("control groups cannot be created here (run as root on Linux)")
    fed = make_federation(tmp_path_factory.mktemp("limits"), "limits", compute=COMPUTE)
    up(fed.root)
    try:
        yield fed
    finally:
        down(fed.root)


def _submit(
    fed: Federation, folder: Path, *, rounds: int = 1, extra: str = "", **overrides: str
) -> str:
    job = write_job(folder, rounds=rounds, extra=extra, **overrides)
    (folder / "task" / "task.py").write_text(TASK + BOMBS)
    spec, code_dir = load_job(job)
    with OrchestratorClient(fed.submitter) as client:
        return client.submit(spec, code_dir, signing_key=fed.key)


def _wait(fed: Federation, job_id: str, timeout: float = 180) -> JobInfo:
    with OrchestratorClient(fed.submitter) as client:
        return client.wait(job_id, timeout=timeout)


def _events(fed: Federation, silo: str, event: str, job_id: str) -> list[dict[str, object]]:
    log = read_log(audit_path(fed.workspace.kit(silo).storage_path))
    return [e.data for e in log if e.event == event and e.data.get("job_id") == job_id]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _started_workers(fed: Federation, job_id: str) -> dict[str, int]:
    return {
        silo: int(str(e["worker_pid"]))
        for silo in ("silo-a", "silo-b", "silo-c")
        for e in _events(fed, silo, "job.started", job_id)
        if e.get("step") == "train"
    }


@pytest.mark.parametrize(
    ("bomb", "limit"),
    [("memory", "memory limit 1 GiB"), ("fork", "process limit 96")],
)
def test_a_bomb_is_stopped_with_its_limit_and_the_silo_runs_its_next_job(
    limited: Federation, tmp_path: Path, bomb: str, limit: str
) -> None:
    hostile = _submit(
        limited,
        tmp_path / "bomb",
        extra=f", extra: {{bomb: {bomb}}}",
        silos="[silo-b]",
        resources="{memory: 1GiB}",
    )
    honest = _submit(limited, tmp_path / "next", silos="[silo-b]", resources="{memory: 1GiB}")
    info = _wait(limited, hostile)
    assert info.state is JobState.FAILED
    assert info.error == f"silo 'silo-b' stopped the job: {limit} reached in round 1"
    (stopped,) = _events(limited, "silo-b", "job.stopped", hostile)
    assert stopped["limit"] == limit and stopped["round"] == 1
    after = _wait(limited, honest)
    assert after.state is JobState.SUCCEEDED, after.error
    pids = _started_workers(limited, hostile)
    assert pids and not any(_alive(p) for p in pids.values())


def test_a_step_past_its_deadline_is_stopped(limited: Federation, tmp_path: Path) -> None:
    job_id = _submit(
        limited,
        tmp_path / "slow",
        extra=", extra: {sleep: 600}",
        silos="[silo-a]",
        resources="{max_step_seconds: 20}",
    )
    started = time.monotonic()
    info = _wait(limited, job_id)
    assert info.state is JobState.FAILED
    assert info.error == "silo 'silo-a' stopped the job: time limit 20 s a step reached in round 1"
    assert time.monotonic() - started < 90
    assert _events(limited, "silo-a", "job.stopped", job_id)


def test_a_job_asking_more_than_a_compute_offers_is_refused_before_round_one(
    limited: Federation, tmp_path: Path
) -> None:
    job_id = _submit(limited, tmp_path / "greedy", resources="{train: {threads: 3}}")
    info = _wait(limited, job_id)
    assert info.state is JobState.FAILED
    assert info.current_round == 0
    error = info.error or ""
    assert "refused the job (rule 'resources')" in error
    assert "compute 'silo-a-cpu' of silo 'silo-a'" in error or "of silo 'silo-" in error
    assert "resources.train.threads" in error
    job_id = _submit(limited, tmp_path / "gpu", resources="{gpus: 1}")
    error = _wait(limited, job_id).error or ""
    assert "has no GPUs" in error and "resources.train.gpus" in error


def test_cancel_stops_every_worker_within_seconds_and_frees_the_silos(
    limited: Federation, tmp_path: Path
) -> None:
    job_id = _submit(limited, tmp_path / "long", extra=", extra: {bomb: spin}")
    deadline = time.monotonic() + 120
    while len(_started_workers(limited, job_id)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = _started_workers(limited, job_id)
    assert len(pids) == 3 and all(_alive(p) for p in pids.values())
    with OrchestratorClient(limited.submitter) as client:
        # a silo whose job spins on every core answers the connectivity check
        time.sleep(2)  # the spinning has begun
        report = client.check(timeout=15)
        assert all(line.ran for line in report.silos), report
        started = time.monotonic()
        assert client.cancel(job_id)
        while any(_alive(p) for p in pids.values()) and time.monotonic() - started < 10:
            time.sleep(0.05)
        stopped_in = time.monotonic() - started
        assert client.wait(job_id, timeout=30).state is JobState.CANCELLED
        assert stopped_in < 5, f"the job's workers outlived the cancel by {stopped_in:.1f} s"
        silos = ("silo-a", "silo-b", "silo-c")
        while time.monotonic() - started < 5 and not all(
            _events(limited, s, "job.ended", job_id) for s in silos
        ):
            time.sleep(0.05)
        for silo in silos:
            assert _events(limited, silo, "job.ended", job_id), silo
    after = _wait(limited, _submit(limited, tmp_path / "after"))
    assert after.state is JobState.SUCCEEDED, after.error


def test_jobs_share_a_compute_or_wait_in_its_queue(limited: Federation, tmp_path: Path) -> None:
    one = "{threads: 1}"
    first = _submit(limited, tmp_path / "one", extra=", extra: {sleep: 4}", resources=one)
    second = _submit(limited, tmp_path / "two", extra=", extra: {sleep: 4}", resources=one)
    third = _submit(limited, tmp_path / "three", resources="{threads: 2}")
    queued_seen = False
    both_running = False
    deadline = time.monotonic() + 120
    with OrchestratorClient(limited.submitter) as client:
        while time.monotonic() < deadline:
            status = client.status()
            assert all(
                s.report is not None and s.report.enforcement.startswith("cgroup")
                for s in status.silos
            ), status.silos
            computes = [c for s in status.silos if s.report is not None for c in s.report.computes]
            queued_seen |= any(third in c.queued for c in computes)
            both_running |= any({first, second} <= set(c.running) for c in computes)
            if all(client.job(j).state.finished for j in (first, second, third)):
                break
            time.sleep(0.2)
        infos = [client.job(j) for j in (first, second, third)]
    assert all(i.state is JobState.SUCCEEDED for i in infos), [i.error for i in infos]
    assert both_running, "two 1-thread jobs did not run side by side on a 2-thread compute"
    assert queued_seen, "a 2-thread job did not wait in the queue while the compute was full"


def test_a_two_thread_job_equals_its_simulation_bit_for_bit(
    limited: Federation, tmp_path: Path
) -> None:
    folder = tmp_path / "threads"
    job_id = _submit(limited, folder, rounds=2, resources="{threads: 2}")
    info = _wait(limited, job_id)
    assert info.state is JobState.SUCCEEDED, info.error
    for silo in ("silo-a", "silo-b", "silo-c"):
        (started,) = [
            e for e in _events(limited, silo, "job.started", job_id) if e["step"] == "train"
        ]
        assert str(started["resources"]).startswith("2 threads")
    with OrchestratorClient(limited.submitter) as client:
        client.download_model(job_id, tmp_path / "federation.safetensors")
    spec, code_dir = load_job(folder / "job.yaml")
    sim = simulate(spec, code_dir, workspace_inputs(limited.root, spec), work_root=tmp_path / "sim")
    federated = load_parameters(tmp_path / "federation.safetensors")
    assert set(federated) == set(sim.parameters)
    for name, value in sim.parameters.items():
        assert np.array_equal(federated[name], value), name
