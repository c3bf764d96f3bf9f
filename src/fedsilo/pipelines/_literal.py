"""Literal pipelines: a plain Python loop over rounds and silos drives an FL job.

The loop runs a step in a silo, gets a handle to its output, and aggregates handles on
the orchestrator, as in Azure ML's "literal" FL pipelines::

    spec, code = load_job("job-literal.yaml")            # a job spec with pipeline: literal
    with start_literal(kit, spec, code, signing_key=key) as job:   # or local_literal(...)
        model = job.initial_model()
        for r in range(1, spec.rounds + 1):
            updates = [job.train(silo, model, round=r) for silo in job.silos]
            model = job.aggregate(updates)
            print(r, job.evaluate(model))
        job.finish(model)

Train steps run at once in every silo (``train`` returns a handle without waiting);
``aggregate`` waits for them. A silo's update never reaches the loop: a handle carries
the step's metrics only, and models are digests the orchestrator keeps. The same loop
runs in one process with :func:`local_literal` (the simulation), giving the same models.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from fedsilo.api import (
    AggregateRequest,
    JobInfo,
    JobState,
    OrchestratorClient,
    StepInfo,
    StepKind,
    StepRequest,
    StepState,
)
from fedsilo.config import Kit
from fedsilo.errors import (
    ConfigError,
    FedsiloError,
    JobFailed,
    StepRefused,
    TaskFailed,
    TransportError,
)
from fedsilo.jobs import JobSpec, PipelineStyle
from fedsilo.jobs._steps import StepLedger

__all__ = ["LiteralJob", "ModelHandle", "StepHandle", "local_literal", "start_literal"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class ModelHandle:
    """A global model of the job (kept by the orchestrator): its digest and its round."""

    digest: str
    round: int


@dataclass(frozen=True)
class StepHandle:
    """A train step in one silo; its update stays with the aggregator, its metrics come here."""

    id: str
    silo: str
    round: int
    model: ModelHandle
    job: LiteralJob = field(repr=False, compare=False)

    def metrics(self) -> dict[str, float]:
        """The step's training metrics, once it finished (waits for it)."""
        return self.job._finished(self.id).metrics or {}


class _Backend(Protocol):
    """Where the steps run: the orchestrator of a federation, or this process."""

    job_id: str
    silos: tuple[str, ...]

    def initial(self) -> str: ...
    def start(self, kind: StepKind, silo: str, model: str, round_: int) -> str: ...
    def wait(self, step_id: str) -> StepInfo: ...
    def aggregate(self, step_ids: tuple[str, ...], round_: int) -> str: ...
    def finish(self, model: str) -> None: ...
    def save_model(self, path: Path) -> str: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


class LiteralJob:
    """A literal pipeline's job: train, aggregate, evaluate, finish, in a loop of your own.

    Used as a context manager, an exception in the loop cancels the job, so its silos stop
    their workers at once.
    """

    def __init__(self, backend: _Backend, spec: JobSpec) -> None:
        self._backend = backend
        self.spec = spec
        self.silos: tuple[str, ...] = backend.silos
        self.rounds = spec.rounds
        self._initial: ModelHandle | None = None
        self._done = False

    @property
    def job_id(self) -> str:
        """The job's id (``fedsilo job show ID``)."""
        return self._backend.job_id

    def __enter__(self) -> LiteralJob:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is not None and not self._done:
                self.cancel()
        finally:
            self._backend.close()

    def initial_model(self) -> ModelHandle:
        """The model every silo built from the job's seed (round 0)."""
        if self._initial is None:
            self._initial = ModelHandle(self._backend.initial(), 0)
        return self._initial

    def train(self, silo: str, model: ModelHandle, *, round: int) -> StepHandle:
        """Start training in ``silo`` from ``model`` for ``round``; returns without waiting."""
        step = self._backend.start(StepKind.TRAIN, silo, model.digest, round)
        return StepHandle(step, silo, round, model, self)

    def aggregate(self, steps: Sequence[StepHandle], *, round: int | None = None) -> ModelHandle:
        """Wait for ``steps``, aggregate them with the job's strategy: the round's model."""
        if not steps:
            raise StepRefused("an aggregate needs at least one train step")
        round_ = steps[0].round if round is None else round
        for step in steps:
            self._finished(step.id)
        return ModelHandle(self._backend.aggregate(tuple(s.id for s in steps), round_), round_)

    def evaluate(
        self, model: ModelHandle, silos: Iterable[str] | None = None
    ) -> dict[str, dict[str, float]]:
        """Evaluate ``model`` in each silo (all at once); each silo's metrics."""
        started = {
            silo: self._backend.start(StepKind.EVALUATE, silo, model.digest, model.round)
            for silo in (self.silos if silos is None else tuple(silos))
        }
        return {silo: self._finished(step).metrics or {} for silo, step in started.items()}

    def finish(self, model: ModelHandle) -> None:
        """End the job: ``model`` is its final model (``fedsilo model get``)."""
        self._backend.finish(model.digest)
        self._done = True

    def save_model(self, path: Path) -> str:
        """Write the finished job's final model to ``path`` (safetensors); its sha256."""
        if not self._done:
            raise StepRefused("the job has no final model until finish(model)")
        return self._backend.save_model(path)

    def cancel(self) -> None:
        """Give the job up; its silos stop their workers."""
        self._backend.cancel()
        self._done = True

    def _finished(self, step_id: str) -> StepInfo:
        info = self._backend.wait(step_id)
        if info.state is StepState.FAILED:
            raise TaskFailed(info.silo, f"{info.kind.value} step {step_id}: {info.error}")
        return info


def _literal_spec(spec: JobSpec) -> JobSpec:
    if spec.pipeline is not PipelineStyle.LITERAL:
        raise ConfigError(
            f"job '{spec.name}' is a {spec.pipeline.value} job; a literal pipeline needs "
            "'pipeline: literal' in its job spec",
            field="pipeline",
        )
    return spec


# -- against a federation ------------------------------------------------------------------


class _Orchestrated:
    """Steps run by the orchestrator, each an ordinary task in its silo."""

    def __init__(self, client: OrchestratorClient, job_id: str, *, timeout: float) -> None:
        self.client = client
        self.job_id = job_id
        self.timeout = timeout
        deadline = time.monotonic() + timeout
        state = client.literal_state(job_id, wait=20)
        while not state.ready:
            if state.error or state.state.finished or time.monotonic() > deadline:
                info = client.job(job_id)
                raise JobFailed(
                    f"job {job_id} did not get its silos ready: {info.error or state.error}"
                )
            state = client.literal_state(job_id, wait=20)
        assert state.initial_model is not None
        self._initial = state.initial_model
        self.silos = tuple(state.silos)

    def initial(self) -> str:
        return self._initial

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Call the orchestrator; a refusal because the job ended says how it ended."""
        try:
            return fn()
        except FedsiloError as exc:
            if isinstance(exc, TransportError):
                raise
            info = self.client.job(self.job_id)
            if info.state.finished:
                raise JobFailed(
                    f"job {self.job_id} ended {info.state.value}: {info.error}"
                ) from exc
            raise

    def start(self, kind: StepKind, silo: str, model: str, round_: int) -> str:
        request = StepRequest(kind=kind, silo=silo, model=model, round=round_)
        return self._call(lambda: self.client.start_step(self.job_id, request).step)

    def wait(self, step_id: str) -> StepInfo:
        deadline = time.monotonic() + self.timeout
        info = self._call(lambda: self.client.step(self.job_id, step_id, wait=20))
        while info.state is StepState.RUNNING:
            if time.monotonic() > deadline:
                raise JobFailed(f"step {step_id} did not finish within {self.timeout:g} s")
            info = self._call(lambda: self.client.step(self.job_id, step_id, wait=20))
        return info

    def aggregate(self, step_ids: tuple[str, ...], round_: int) -> str:
        request = AggregateRequest(steps=step_ids, round=round_)
        return self._call(lambda: self.client.aggregate(self.job_id, request).model)

    def finish(self, model: str) -> None:
        try:
            self.client.finish(self.job_id, model)
            info: JobInfo = self.client.wait(self.job_id, timeout=self.timeout)
        finally:
            self.close()
        if info.state is not JobState.SUCCEEDED:
            raise JobFailed(f"job {self.job_id} ended {info.state.value}: {info.error}")

    def save_model(self, path: Path) -> str:
        with OrchestratorClient(self.client.kit) as client:
            return client.download_model(self.job_id, path)

    def cancel(self) -> None:
        try:
            self.client.cancel(self.job_id)
        finally:
            self.close()

    def close(self) -> None:
        self.client.close()


def start_literal(
    kit: Kit,
    spec: JobSpec,
    code_dir: Path,
    *,
    signing_key: Any = None,
    timeout: float = 3600.0,
) -> LiteralJob:
    """Submit ``spec`` (``pipeline: literal``) as the submitter ``kit``; drive it from here.

    Returns once every silo approved the job and prepared its worker. ``signing_key``
    signs the code (see ``fedsilo submit``); ``timeout`` bounds each wait for a step.
    """
    client = OrchestratorClient(kit, timeout=60)
    try:
        job_id = client.submit(_literal_spec(spec), code_dir, signing_key=signing_key)
    except BaseException:
        client.close()
        raise
    try:
        return LiteralJob(_Orchestrated(client, job_id, timeout=timeout), spec)
    except BaseException:
        try:
            client.cancel(job_id)
        finally:
            client.close()
        raise


# -- in this process -----------------------------------------------------------------------


class _InProcess:
    """Every silo in this process, with the code the job workers run (the simulation)."""

    def __init__(
        self,
        spec: JobSpec,
        code_dir: Path,
        inputs: Mapping[str, Mapping[str, Path]],
        work_root: Path,
    ) -> None:
        from fedsilo.pipelines._simulation import silo_runners
        from fedsilo.privacy import strategy_for
        from fedsilo.rounds import RoundEngine

        self.job_id = f"{spec.name}-local"
        self.silos = spec.silos
        self.engine = RoundEngine(
            spec, strategy_for(spec.strategy, spec.privacy), job_id=self.job_id
        )
        self.runners = silo_runners(spec, code_dir, inputs, work_root)
        self.ledger = StepLedger(self.job_id, spec.silos, spec.rounds)
        self.params: dict[str, Any] = {}
        self.results: dict[str, tuple[StepInfo, Any]] = {}
        initial = {silo: runner.prepare() for silo, runner in self.runners.items()}
        self._initial = self._keep(initial[spec.silos[0]], 0)

    def _keep(self, params: Any, round_: int) -> str:
        from fedsilo.tensors import parameters_to_bytes

        digest = hashlib.sha256(parameters_to_bytes(params)).hexdigest()  # an id, not a file
        self.params[digest] = params
        self.ledger.add_model(digest, round_)
        return digest

    def initial(self) -> str:
        return self._initial

    def start(self, kind: StepKind, silo: str, model: str, round_: int) -> str:
        step_id = f"{kind.value}-{silo}-{len(self.results)}"
        step = self.ledger.add_step(step_id, kind, silo, model, round_)
        runner = self.runners[silo]
        started = time.perf_counter()
        update = None
        if kind is StepKind.TRAIN:
            config = self.engine.strategy.configure_round(step.round, [silo]).get(silo)
            update, metrics = runner.fit(step.round, self.params[model], config)
        else:
            metrics = runner.evaluate(step.round, self.params[model])
        seconds = time.perf_counter() - started
        info = StepInfo(
            step=step_id,
            kind=kind,
            silo=silo,
            round=step.round,
            model=model,
            state=StepState.DONE,
            metrics=metrics,
            seconds=seconds,
            compute_seconds=seconds,
        )
        self.results[step_id] = (info, update)
        return step_id

    def wait(self, step_id: str) -> StepInfo:
        return self.results[step_id][0]

    def aggregate(self, step_ids: tuple[str, ...], round_: int) -> str:
        steps = self.ledger.check_aggregate(step_ids, round_, lambda i: i in self.results)
        from fedsilo.rounds import Answer

        answers = []
        for step in steps:
            info, update = self.results[step.id]
            samples = int((info.metrics or {}).get("num_samples", 0))
            answers.append(Answer(step.silo, info.metrics, update=update, num_samples=samples))
        closed = self.engine.aggregate(round_, self.params[steps[0].model], answers)
        digest = self._keep(closed.parameters, round_)
        self.ledger.aggregated(steps, round_, digest)
        return digest

    def finish(self, model: str) -> None:
        self.ledger.model_round(model)
        self.final = model

    def save_model(self, path: Path) -> str:
        from fedsilo.tensors import save_parameters

        return save_parameters(self.params[self.final], path)

    def cancel(self) -> None:
        return None

    def close(self) -> None:
        return None


def local_literal(
    spec: JobSpec,
    code_dir: Path,
    inputs: Mapping[str, Mapping[str, Path]],
    *,
    work_root: Path,
) -> LiteralJob:
    """The same literal pipeline in this process: ``inputs[silo][role]`` is a data path.

    For development, as ``fedsilo sim`` is: every silo's data must be readable here.
    """
    return LiteralJob(_InProcess(_literal_spec(spec), code_dir, inputs, work_root), spec)
