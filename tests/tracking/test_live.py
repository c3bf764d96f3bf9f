"""The orchestrator tracks a job while it runs: its MLflow run shows each round as it closes.

The orchestrator here is the real one (its job loop, strategy, database and blob store);
only the silos' agents are played by this test, through the same calls the REST API
makes (``next_task``, ``deliver``), so the test decides when each round may finish and
looks at the tracking store in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fedsilo.api import JobInfo, JobState, Outcome, SubmitRequest, TaskResult, parse_task
from fedsilo.api._messages import FitTask, PrepareTask, ReleaseTask
from fedsilo.audit import AuditLog
from fedsilo.jobs import JobSpec, pack_bundle
from fedsilo.orchestrator._blobs import BlobStore
from fedsilo.orchestrator._core import Orchestrator
from fedsilo.orchestrator._db import Store
from fedsilo.tensors import load_parameters, parameters_to_bytes
from fedsilo.tracking import JobRun, Tracker
from fedsilo.tracking._mlflow import mlflow_client

SILOS = ("silo-a", "silo-b")
ROUNDS = 3
DOCS = Path(__file__).parents[2] / "docs" / "tracking.md"


def _spec() -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "live",
            "code": ".",
            "silos": list(SILOS),
            "rounds": ROUNDS,
            "hyperparameters": {"lr": 0.1},
            "share_with": ["bob"],
            "privacy": {"central": {"clip_norm": 10.0, "noise_multiplier": 0.5}},
        }
    )


def _train(silo: str, round_: int) -> dict[str, float]:
    """What a DP-SGD silo reports: its loss, its samples, its epsilon so far."""
    i = SILOS.index(silo)
    return {"loss": 2.0 / round_ + i, "num_samples": 10.0 * (i + 1), "epsilon": 0.5 * round_}


def _evaluate(silo: str, round_: int) -> dict[str, float]:
    i = SILOS.index(silo)
    return {"accuracy": 0.5 + 0.1 * round_ + i / 100, "num_samples": 10.0 * (i + 1)}


class Federation:
    """The real orchestrator with agents played in-process; ``gates[n]`` holds round n."""

    def __init__(self, root: Path, tracker: Tracker) -> None:
        self.orch = Orchestrator(
            federation="live",
            silos=SILOS,
            store=Store(f"sqlite:///{root / 'orchestrator.db'}"),
            blobs=BlobStore(root / "blobs"),
            audit=AuditLog(root / "audit.jsonl", actor="orchestrator"),
            tracker=tracker,
        )
        self.gates = {n: asyncio.Event() for n in range(1, ROUNDS + 1)}
        self.code = root / "code"
        self.code.mkdir()
        (self.code / "task.py").write_text("def model(ctx): ...\n")

    async def submit(self) -> str:
        data, manifest = pack_bundle(self.code)
        digest = self.orch.blobs.put_bytes(data)
        request = SubmitRequest(spec=_spec(), bundle_digest=digest, manifest_digest=manifest.digest)
        return await self.orch.submit("alice", request)

    async def agent(self, silo: str) -> None:
        orch = self.orch
        while True:
            raw = await orch.dispatch.next_task(silo, 0.2)
            if raw is None:
                continue
            task = parse_task(raw)
            if isinstance(task, ReleaseTask):
                return
            result: TaskResult
            if isinstance(task, PrepareTask):
                params = {"w": np.zeros(4, np.float32)}
                result = TaskResult(outcome=Outcome.DONE, params_digest=self._put(params))
            elif isinstance(task, FitTask):
                gate = self.gates[task.round]
                while not gate.is_set():  # a silo training for a while: heartbeats only
                    orch.dispatch.seen(silo)
                    await asyncio.sleep(0.05)
                current = load_parameters(orch.blobs.path(task.params_digest))
                params = {"w": current["w"] + np.float32(SILOS.index(silo) + 1)}
                train = _train(silo, task.round)
                result = TaskResult(
                    outcome=Outcome.DONE,
                    params_digest=self._put(params),
                    num_samples=int(train["num_samples"]),
                    train_metrics=train,
                    eval_metrics=_evaluate(silo, task.round - 1) if task.evaluate_first else None,
                )
            else:
                result = TaskResult(outcome=Outcome.DONE, eval_metrics=_evaluate(silo, task.round))
            assert orch.dispatch.deliver(silo, task.task_id, result)

    def _put(self, params: dict[str, np.ndarray]) -> str:
        return self.orch.blobs.put_bytes(parameters_to_bytes(params))

    async def run(self, steps: Callable[[str], Awaitable[None]]) -> JobInfo:
        """Start the agents, submit the job, run ``steps(job_id)``, open every gate, wait."""
        agents = [asyncio.create_task(self.agent(s)) for s in SILOS]
        job_id = await self.submit()
        await steps(job_id)
        for gate in self.gates.values():
            gate.set()
        info = await self._finished(job_id)
        await asyncio.wait_for(asyncio.gather(*agents), timeout=30)
        assert await asyncio.to_thread(self.orch.track_flush, 60)
        return info

    async def _finished(self, job_id: str) -> JobInfo:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = await self.orch.job_info(job_id)
            assert info is not None
            if info.state.finished:
                return info
            await asyncio.sleep(0.05)
        raise AssertionError("the job did not finish within 60 s")


def _job_run(client: MlflowClient, job_id: str) -> Run | None:
    experiment = client.get_experiment_by_name("alice/live")  # its submitter's
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`fedsilo.job_id` = '{job_id}' and tags.`fedsilo.kind` = 'job'",
    )
    return runs[0] if runs else None


def _steps(client: MlflowClient, run: Run, key: str) -> dict[int, float]:
    """A metric's values by step (by round), read from the store."""
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


async def _until_logged(client: MlflowClient, job_id: str, key: str, round_: int) -> Run:
    """The job's run, once ``key`` holds round ``round_`` (read from the store, not memory)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = await asyncio.to_thread(_job_run, client, job_id)
        logged = run is not None and key in run.data.metrics
        if logged and round_ in await asyncio.to_thread(_steps, client, run, key):
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"round {round_} of {key} did not appear in the job's run within 60 s")


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker.in_folder(tmp_path / "tracking")


@pytest.fixture
def client(tracker: Tracker) -> MlflowClient:
    return mlflow_client(tracker.tracking_uri)


def test_a_running_jobs_run_shows_each_round_before_the_job_finishes(
    tmp_path: Path, tracker: Tracker, client: MlflowClient
) -> None:
    federation = Federation(tmp_path, tracker)
    seen: dict[str, Run] = {}
    curves: dict[str, dict[str, dict[int, float]]] = {}  # what the store held, by moment
    keys = ("silo-a/train_loss", "silo-b/epsilon", "silo-a/accuracy", "aggregate/accuracy")
    keys += ("aggregate/central_epsilon",)

    def read(moment: str, run: Run) -> None:
        seen[moment] = run
        curves[moment] = {key: _steps(client, run, key) for key in keys}

    async def steps(job_id: str) -> None:
        orch = federation.orch
        deadline = time.monotonic() + 60
        while (run := await asyncio.to_thread(_job_run, client, job_id)) is None or (
            "hyperparameters.lr" not in run.data.params  # logged right after the run is made
        ):
            assert time.monotonic() < deadline, "the job's run did not appear within 60 s"
            await asyncio.sleep(0.1)
        read("start", run)  # round 1 is still held: the run exists from the job's start
        federation.gates[1].set()
        read("round 1", await _until_logged(client, job_id, "silo-b/train_loss", 1))
        info = await orch.job_info(job_id)
        assert info is not None and info.state is JobState.RUNNING and info.current_round == 2
        federation.gates[2].set()
        read("round 2", await _until_logged(client, job_id, "aggregate/central_epsilon", 2))
        info = await orch.job_info(job_id)
        assert info is not None and info.state is JobState.RUNNING and info.current_round == 3

    info = asyncio.run(federation.run(steps))
    assert info.state is JobState.SUCCEEDED, info.error

    start = seen["start"]
    assert start.info.status == "RUNNING"
    assert start.data.params["hyperparameters.lr"] == "0.1"
    assert start.data.tags["fedsilo.submitter"] == "alice"
    assert start.data.tags["fedsilo.readers"] == "bob"
    assert not start.data.metrics

    assert seen["round 1"].info.status == "RUNNING"
    assert seen["round 1"].data.tags["fedsilo.rounds"] == "1"
    round_1 = curves["round 1"]
    assert round_1["silo-a/train_loss"] == {1: pytest.approx(2.0)}
    assert round_1["silo-b/epsilon"] == {1: pytest.approx(0.5)}
    assert round_1["aggregate/central_epsilon"][1] > 0
    assert round_1["silo-a/accuracy"] == {}  # round 1 is evaluated with round 2's training
    round_2 = curves["round 2"]
    assert round_2["silo-a/accuracy"] == {1: pytest.approx(0.6)}
    # the aggregate weighs silo-b's 20 samples twice silo-a's 10
    assert round_2["aggregate/accuracy"] == {1: pytest.approx((0.6 + 2 * 0.61) / 3)}
    assert round_2["aggregate/central_epsilon"][2] > round_2["aggregate/central_epsilon"][1]
    assert round_2["silo-a/train_loss"] == {1: pytest.approx(2.0), 2: pytest.approx(1.0)}


def test_the_finished_run_is_complete_and_logged_once(
    tmp_path: Path, tracker: Tracker, client: MlflowClient
) -> None:
    federation = Federation(tmp_path, tracker)

    async def nothing(job_id: str) -> None:
        return None

    info = asyncio.run(federation.run(nothing))
    assert info.state is JobState.SUCCEEDED, info.error
    run = _job_run(client, info.id)
    assert run is not None and run.info.status == "FINISHED"
    assert run.data.tags["fedsilo.state"] == "succeeded"
    assert run.data.tags["fedsilo.rounds"] == str(ROUNDS)
    for silo in SILOS:  # the final evaluation (round 3) came with the job's end
        accuracy = client.get_metric_history(run.info.run_id, f"{silo}/accuracy")
        assert [m.step for m in accuracy] == [1, 2, 3]  # each round once, never twice
        for m in accuracy:
            assert m.value == pytest.approx(_evaluate(silo, m.step)["accuracy"])
        epsilon = client.get_metric_history(run.info.run_id, f"{silo}/epsilon")
        assert [(m.step, m.value) for m in epsilon] == [(n, 0.5 * n) for n in (1, 2, 3)]
    aggregate = client.get_metric_history(run.info.run_id, "aggregate/accuracy")
    assert [m.step for m in aggregate] == [1, 2, 3]
    curve = client.get_metric_history(run.info.run_id, "silo-a/train_loss")
    assert [m.step for m in curve] == [1, 2, 3]
    epsilon = client.get_metric_history(run.info.run_id, "aggregate/central_epsilon")
    assert [m.step for m in epsilon] == [1, 2, 3]
    assert epsilon[0].value < epsilon[1].value < epsilon[2].value
    files = client.list_artifacts(run.info.run_id, "model")
    assert [Path(f.path).name for f in files] == [info_model_digest(federation, info.id)]
    [output] = run.outputs.model_outputs  # so MLflow's UI calls it a training run
    assert output.step == ROUNDS
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == list(SILOS)
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "accuracy")] == [
            1,
            2,
            3,
        ]


def info_model_digest(federation: Federation, job_id: str) -> str:
    row = federation.orch.store.job(job_id)
    assert row is not None and row.model_digest is not None
    return row.model_digest


def test_the_documented_keys_are_the_logged_ones(
    tmp_path: Path, tracker: Tracker, client: MlflowClient
) -> None:
    federation = Federation(tmp_path, tracker)

    async def nothing(job_id: str) -> None:
        return None

    info = asyncio.run(federation.run(nothing))
    run = _job_run(client, info.id)
    assert run is not None
    documented = DOCS.read_text()
    shapes = set()
    for key in run.data.metrics:
        parts = key.split("/")
        if parts[-2] in SILOS:
            parts[-2] = "{silo}"
        metric = parts[-1]
        if metric not in ("epsilon", "central_epsilon"):
            parts[-1] = "train_{metric}" if metric.startswith("train_") else "{metric}"
        shapes.add("/".join(parts))
    assert shapes == {
        "{silo}/{metric}",
        "{silo}/train_{metric}",
        "{silo}/epsilon",
        "aggregate/{metric}",
        "aggregate/central_epsilon",
    }
    for shape in shapes:
        assert f"`{shape}`" in documented, f"docs/tracking.md does not document {shape}"
    for tag in run.data.tags:
        if tag.startswith("fedsilo."):
            assert f"`{tag}`" in documented, f"docs/tracking.md does not document tag {tag}"
    [output] = run.outputs.model_outputs
    for tag in client.get_logged_model(output.model_id).tags:
        if tag.startswith("fedsilo."):
            assert f"`{tag}`" in documented, f"docs/tracking.md does not document tag {tag}"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "`mlflow.experimentKind`" in documented
    assert "`custom_model_development`" in documented


def test_a_tracking_store_that_fails_never_fails_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    broken = Tracker.for_uri(f"sqlite:///{blocker / 'mlflow.db'}", blocker / "artifacts")
    federation = Federation(tmp_path, broken)

    async def nothing(job_id: str) -> None:
        return None

    with caplog.at_level(logging.WARNING, logger="fedsilo.tracking"):
        info = asyncio.run(federation.run(nothing))
    assert info.state is JobState.SUCCEEDED, info.error
    assert info.history[-1].evaluate_aggregate["accuracy"] > 0
    assert any("could not track job" in r.getMessage() for r in caplog.records)


class _SlowTracker(Tracker):
    """A store that takes its time to close a run, as a busy or new store does."""

    def finish(self, run: JobRun, state: str) -> None:
        time.sleep(2)
        super().finish(run, state)


def test_stopping_the_orchestrator_waits_until_the_ended_job_is_logged(tmp_path: Path) -> None:
    tracker = _SlowTracker.in_folder(tmp_path / "tracking")
    federation = Federation(tmp_path, tracker)

    async def run_to_the_end() -> JobInfo:
        agents = [asyncio.create_task(federation.agent(s)) for s in SILOS]
        job_id = await federation.submit()
        for gate in federation.gates.values():
            gate.set()
        info = await federation._finished(job_id)
        await asyncio.wait_for(asyncio.gather(*agents), timeout=30)
        return info

    info = asyncio.run(run_to_the_end())
    assert info.state is JobState.SUCCEEDED, info.error
    # what the orchestrator's server does as it stops, before its process exits
    assert federation.orch.track_close(60)
    run = _job_run(mlflow_client(tracker.tracking_uri), info.id)
    assert run is not None and run.info.status == "FINISHED"
    assert run.data.tags["fedsilo.state"] == "succeeded"
    assert len(run.outputs.model_outputs) == 1
    assert federation.orch.track_close(1)  # a second stop has nothing left to do
