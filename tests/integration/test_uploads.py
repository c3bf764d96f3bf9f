"""Uploads checked as parameters, tried by a compromised silo through the real processes.

silo-b's agent is stopped and the test takes its place with silo-b's own certificate and
key: it answers its tasks as an agent would, but uploads what it likes as its model update
(NaN, Inf, int64 and bool tensors, a wrong shape, an earlier round's update again). The
real orchestrator refuses each, naming silo-b and the tensor; nothing reaches a global
model. silo-a, a real agent, trains as usual.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient, Outcome, TaskResult
from fedsilo.api._messages import FitTask, JobTask, PingTask, PrepareTask
from fedsilo.audit import audit_path, read_log
from fedsilo.errors import UploadCorrupted
from fedsilo.jobs import load_job, unpack_bundle
from fedsilo.runtime import processes, up
from fedsilo.task import SiloRunner, load_task
from fedsilo.tensors import load_parameters, save_parameters
from tests.integration.conftest import Federation, make_federation, write_job

pytestmark = pytest.mark.integration

Params = dict[str, npt.NDArray[np.generic]]
Forge = Callable[[int, Params, "Impostor"], Params]


@dataclass
class Impostor:
    """silo-b's agent, as its attacker would write it: real tasks, forged updates."""

    fed: Federation
    forge: Forge | None = None
    inline: bool = False  # send each update with its result, as an agent does a small one
    mislabel: bool = False  # ... under the digest of other bytes, once
    refusals: list[str] = field(default_factory=list)
    sent: dict[int, Params] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="impostor-")))

    def run(self) -> None:
        kit = self.fed.workspace.kit("silo-b")
        with OrchestratorClient(kit, timeout=30) as client:
            beat = threading.Thread(target=self._beat, args=(kit,), daemon=True)
            beat.start()
            while not self.stop.is_set():
                task = client.next_task(1.0)
                if task is not None:
                    client.send_result(task.task_id, self._answer(client, task))

    def _beat(self, kit: object) -> None:
        with OrchestratorClient(kit, timeout=10) as client:  # type: ignore[arg-type]
            while not self.stop.is_set():
                client.heartbeat(busy=False, sandbox="bubblewrap")
                self.stop.wait(1.0)

    def _answer(self, client: OrchestratorClient, task: PingTask | JobTask) -> TaskResult:
        if isinstance(task, PrepareTask):  # the model, built from the job's own code and seed
            code = self.scratch / task.job_id / "code"
            unpack_bundle(client.download_bundle(task.job_id), code)
            runner = SiloRunner(
                load_task(code, task.context.entrypoint),
                silo="silo-b",
                inputs={},
                work_dir=self.scratch / task.job_id / "work",
                hyperparameters=_hyperparameters(task),
            )
            built = self._upload(client, runner.build())
            return TaskResult(outcome=Outcome.DONE, params_digest=built)
        if isinstance(task, FitTask):
            path = self.scratch / f"global-{task.params_digest}"
            client.download_params(task.job_id, task.params_digest, path)
            current = load_parameters(path)
            assert self.forge is not None
            update = self.forge(task.round, current, self)
            self.sent.setdefault(task.round, update)
            if not self.inline:
                digest, data = self._upload(client, update), None
            else:
                out = self.scratch / f"up-{time.monotonic_ns()}.safetensors"
                digest, data = save_parameters(update, out), out.read_bytes()
            result = TaskResult(
                outcome=Outcome.DONE,
                params_digest=digest,
                params=data,
                num_samples=100,
                train_metrics={"num_samples": 100.0},
            )
            if self.mislabel:
                self.mislabel = False
                forged = result.model_copy(update={"params": data + b"\0" if data else b""})
                try:
                    client.send_result(task.task_id, forged)
                except UploadCorrupted as exc:
                    self.refusals.append(str(exc))
            return result
        return TaskResult(outcome=Outcome.DONE)

    def _upload(self, client: OrchestratorClient, params: Params) -> str:
        path = self.scratch / f"up-{time.monotonic_ns()}.safetensors"
        save_parameters(params, path)
        return client.upload_params(path)


def _hyperparameters(task: PrepareTask) -> object:
    from fedsilo.jobs import Hyperparameters

    return Hyperparameters.model_validate(task.context.hyperparameters)


def _first_float(params: Params) -> str:
    return next(n for n, v in params.items() if v.dtype.kind == "f" and v.ndim == 2)


def trained(current: Params) -> Params:
    """An honest-looking update: the global model moved a little."""
    return {n: (v + np.float32(0.01)).astype(v.dtype) for n, v in current.items()}


def with_tensor(make: Callable[[npt.NDArray[np.generic]], npt.NDArray[np.generic]]) -> Forge:
    def forge(_round: int, current: Params, _imp: Impostor) -> Params:
        name = _first_float(current)
        return {**trained(current), name: make(current[name])}

    return forge


def replay(round_: int, current: Params, imp: Impostor) -> Params:
    return imp.sent[1] if round_ > 1 else trained(current)


def far(_round: int, current: Params, _imp: Impostor) -> Params:
    return {n: (v * 10).astype(v.dtype) for n, v in current.items()}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, Impostor]]:
    fed = make_federation(tmp_path_factory.mktemp("uploads"), "uploads")
    up(fed.root)
    victim = next(p for p in processes(fed.root) if p.name == "silo-b")
    impostor = Impostor(fed)
    os.kill(victim.pid, signal.SIGKILL)
    thread = threading.Thread(target=impostor.run, daemon=True)
    thread.start()
    try:
        yield fed, impostor
    finally:
        impostor.stop.set()
        thread.join(timeout=10)
        subprocess.run(
            [sys.executable, "-m", "fedsilo", "down", str(fed.root)], capture_output=True
        )


def run(fed: Federation, imp: Impostor, name: str, forge: Forge, **overrides: str) -> JobInfo:
    imp.forge, imp.sent = forge, {}
    folder = fed.scratch / name
    spec, code_dir = load_job(write_job(folder, rounds=2, name=name, **overrides))
    with OrchestratorClient(fed.submitter) as client:
        return client.wait(client.submit(spec, code_dir, signing_key=fed.key), timeout=120)


def orchestrator_audit(fed: Federation, job_id: str) -> list[dict[str, object]]:
    entries = read_log(audit_path(fed.workspace.kit("orchestrator").storage_path))
    return [{"event": e.event, **e.data} for e in entries if e.data.get("job_id") == job_id]


CASES: dict[str, tuple[Forge, str]] = {
    "nan": (with_tensor(lambda v: np.full_like(v, np.nan)), "not finite (NaN)"),
    "inf": (with_tensor(lambda v: np.full_like(v, -np.inf)), "not finite (Inf)"),
    "int64": (with_tensor(lambda v: np.ones(v.shape, np.int64)), "is int64"),
    "bool": (with_tensor(lambda v: np.ones(v.shape, bool)), "is bool"),
    "shape": (with_tensor(lambda v: np.zeros(v.shape[::-1], v.dtype)), "has shape"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_update_that_is_not_the_global_models_numbers_is_refused_naming_silo_and_tensor(
    fed: tuple[Federation, Impostor], case: str
) -> None:
    federation, impostor = fed
    forge, words = CASES[case]
    info = run(federation, impostor, f"bad-{case}", forge)
    assert info.state is JobState.FAILED, info
    error = info.error or ""
    assert "round 1" in error and "silo 'silo-b'" in error and words in error, error
    assert "tensor '0.weight'" in error, error
    assert str(federation.root) not in error  # no path of the orchestrator's
    refused = [e for e in orchestrator_audit(federation, info.id) if e["event"] == "update.refused"]
    assert refused and refused[0]["silo"] == "silo-b" and refused[0]["tensor"] == "0.weight"
    assert not info.has_model and info.current_round == 1  # nothing was aggregated


def test_an_update_sent_with_its_result_is_vetted_as_an_upload_is(
    fed: tuple[Federation, Impostor],
) -> None:
    federation, impostor = fed
    impostor.inline = True
    try:
        info = run(federation, impostor, "inline-nan", CASES["nan"][0])
    finally:
        impostor.inline = False
    assert info.state is JobState.FAILED, info
    error = info.error or ""
    assert "silo 'silo-b'" in error and "not finite (NaN)" in error, error
    assert "tensor '0.weight'" in error, error


def test_an_update_sent_with_its_result_under_another_digest_is_refused_and_audited(
    fed: tuple[Federation, Impostor],
) -> None:
    federation, impostor = fed
    impostor.inline, impostor.mislabel, impostor.refusals = True, True, []
    try:
        info = run(federation, impostor, "inline-mislabelled", lambda _r, c, _i: trained(c))
    finally:
        impostor.inline = False
    # the forged result was refused, naming the digest; the honest one sent next was taken
    assert len(impostor.refusals) == 1 and "does not match its digest" in impostor.refusals[0]
    assert info.state is JobState.SUCCEEDED, info.error
    entries = read_log(audit_path(federation.workspace.kit("orchestrator").storage_path))
    refused = [e.data for e in entries if e.event == "upload.refused"]
    assert refused and refused[-1]["caller"] == "silo-b"
    blobs = federation.workspace.kit("orchestrator").storage_path / "blobs"
    assert not any(p.name == str(refused[-1]["reason"]).split()[-1] for p in blobs.iterdir())


def test_an_earlier_rounds_update_sent_again_is_refused_and_named_in_the_history(
    fed: tuple[Federation, Impostor],
) -> None:
    federation, impostor = fed
    info = run(federation, impostor, "replay", replay)
    assert info.state is JobState.FAILED
    error = info.error or ""
    assert "round 2" in error and "silo 'silo-b'" in error, error
    assert "byte-identical to the update silo 'silo-b' sent in round 1" in error, error
    notes = [(r.round, n.kind, n.silo) for r in info.history for n in r.notes]
    assert (2, "replay", "silo-b") in notes
    shown = subprocess.run(
        [sys.executable, "-m", "fedsilo", "job", "show", info.id, "-w", str(federation.root)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "round 2, replay:" in shown.stdout, shown.stdout + shown.stderr


def test_a_bound_on_the_norm_refuses_or_clips_and_the_history_says_so(
    fed: tuple[Federation, Impostor],
) -> None:
    federation, impostor = fed
    refused = run(federation, impostor, "far-refused", far, updates="{max_norm: 2}")
    assert refused.state is JobState.FAILED
    assert "past the job's bound of 2 (updates.max_norm)" in (refused.error or "")
    clipped = run(
        federation,
        impostor,
        "far-clipped",
        far,
        updates="{max_norm: 2, over_norm: clip}",
    )
    assert clipped.state is JobState.SUCCEEDED, clipped.error
    notes = [(r.round, n.kind) for r in clipped.history for n in r.notes if n.silo == "silo-b"]
    assert notes == [(1, "clipped"), (2, "clipped")]
    events = [e["event"] for e in orchestrator_audit(federation, clipped.id)]
    assert events.count("update.clipped") == 2
    with OrchestratorClient(federation.submitter) as client:
        client.download_model(clipped.id, impostor.scratch / "clipped.safetensors")
    model = load_parameters(impostor.scratch / "clipped.safetensors")
    assert all(np.isfinite(v).all() for v in model.values() if v.dtype.kind == "f")
