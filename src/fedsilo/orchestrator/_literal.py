"""A literal pipeline's job: the submitter's own Python loop drives it, one step at a time.

The orchestrator prepares every silo as for any job (the silos approve the whole job
once: its code, inputs, outputs, privacy and number of rounds), then waits for the
submitter's steps: train in a silo from a global model, aggregate finished train steps
with the job's strategy, evaluate a global model in a silo, finish. Each step is an
ordinary task to the silo's agent. A silo's update stays with the orchestrator: the
submitter holds handles (step ids, model digests) and sees metrics, never an update.

A step that fails or is refused, or a silo that disconnects during one, fails the job, as
in a scatter-gather job. So does a submitter that sends nothing for ``IDLE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from fedsilo.api._messages import (
    JobState,
    LiteralState,
    StepInfo,
    StepKind,
    StepState,
    TaskKind,
    TaskResult,
)
from fedsilo.errors import FedsiloError, JobFailed, SiloUnavailable, StepRefused, TaskFailed
from fedsilo.jobs._steps import Step, StepLedger
from fedsilo.orchestrator._loop import _JobRun, _Outcome
from fedsilo.privacy import strategy_for
from fedsilo.rounds import Answer, RoundEngine
from fedsilo.tensors import load_parameters

if TYPE_CHECKING:
    from fedsilo.jobs import JobSpec
    from fedsilo.orchestrator._core import Orchestrator

__all__ = ["IDLE_SECONDS", "LiteralRun"]

log = logging.getLogger("fedsilo.orchestrator")

IDLE_SECONDS = 1800.0
_CHECK_SECONDS = 1.0


def _info(step: Step, future: asyncio.Future[TaskResult]) -> StepInfo:
    result = future.result() if future.done() and not future.cancelled() else None
    if result is None:
        state = StepState.RUNNING if not future.done() else StepState.FAILED
    else:
        state = StepState.DONE if result.ok else StepState.FAILED
    metrics = None
    if result is not None and result.ok:
        metrics = result.train_metrics if step.kind == StepKind.TRAIN else result.eval_metrics
    return StepInfo(
        step=step.id,
        kind=StepKind(step.kind),
        silo=step.silo,
        round=step.round,
        model=step.model,
        state=state,
        metrics=metrics,
        error=result.error if result is not None else ("withdrawn" if future.done() else None),
        seconds=result.seconds if result is not None else 0.0,
        compute_seconds=result.compute_seconds if result is not None else 0.0,
    )


class LiteralRun(_JobRun):
    """The job of a literal pipeline, driven by its submitter's requests."""

    def __init__(self, orch: Orchestrator, job_id: str, spec: JobSpec, author: str) -> None:
        super().__init__(orch, job_id, spec, author)
        self.strategy = strategy_for(spec.strategy, spec.privacy)
        self.engine = RoundEngine(spec, self.strategy, job_id=job_id)
        self.ledger = StepLedger(job_id, spec.silos, spec.rounds)
        self.initial: str | None = None
        self._futures: dict[str, asyncio.Future[TaskResult]] = {}
        self._started: set[int] = set()
        self._done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._ready = asyncio.Event()
        self._touched = time.monotonic()

    # -- the job ----------------------------------------------------------------------------

    async def run(self) -> str:
        """Prepare every silo, then serve the submitter's steps until it finishes the job."""
        self.initial = await self.prepare()
        self.ledger.add_model(self.initial, 0)
        self.orch.update_job(self.job_id, detail="waiting for the submitter's pipeline")
        self._ready.set()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(self._done), _CHECK_SECONDS)
                self._watch()
        finally:
            self.orch.dispatch.withdraw([i for i, f in self._futures.items() if not f.done()])

    def _watch(self) -> None:
        """Fail the job on an idle submitter or a silo gone with a step open."""
        if time.monotonic() - self._touched > IDLE_SECONDS:
            self._fail(
                JobFailed(
                    f"the submitter's pipeline sent nothing for {IDLE_SECONDS:g} s; "
                    "the job is given up"
                )
            )
        for step_id, future in self._futures.items():
            silo = self.ledger.steps[step_id].silo
            if not future.done() and not self.orch.dispatch.online(silo):
                self._fail(SiloUnavailable(silo, f"disconnected during step {step_id}"))

    def _fail(self, exc: FedsiloError) -> None:
        if not self._done.done():
            self._done.set_exception(exc)

    def _check_open(self) -> None:
        self._touched = time.monotonic()
        if self._done.done():
            raise StepRefused(f"job {self.job_id} is over; it takes no more steps")
        if not self._ready.is_set():
            raise StepRefused(f"job {self.job_id} is still preparing its silos")

    def state(self) -> LiteralState:
        """Whether the silos are prepared, and the initial model."""
        error, state = None, JobState.RUNNING
        if self._done.done():
            failure = None if self._done.cancelled() else self._done.exception()
            error = str(failure) if failure is not None else None
            state = JobState.FAILED if failure is not None else JobState.SUCCEEDED
        return LiteralState(
            job_id=self.job_id,
            state=state,
            ready=self._ready.is_set(),
            silos=list(self.spec.silos),
            rounds=self.spec.rounds,
            initial_model=self.initial,
            error=error,
        )

    async def wait_ready(self, wait: float) -> LiteralState:
        """The state, once the silos are prepared (or the job ended), or after ``wait`` s."""
        deadline = time.monotonic() + wait
        while not (self._ready.is_set() or self._done.done()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.state()

    # -- steps ------------------------------------------------------------------------------

    def step(self, kind: StepKind, silo: str, model: str, round_: int) -> StepInfo:
        """Start a step in ``silo``; it runs while the submitter goes on."""
        self._check_open()
        round_ = self.ledger.check_step(kind, silo, model, round_)
        if kind is StepKind.TRAIN:
            if round_ not in self._started:
                self._started.add(round_)
                self.orch.store.start_round(self.job_id, round_)
                self.orch.update_job(self.job_id, current_round=round_, detail=f"round {round_}")
            assert self.strategy is not None  # set in __init__
            config = self.strategy.configure_round(round_, [silo]).get(silo, {})
            message = self.task_message(
                silo, TaskKind.FIT, config, round=round_, params_digest=model
            )
        else:
            message = self.task_message(
                silo, TaskKind.EVALUATE, {}, round=round_, params_digest=model
            )
        step = self.ledger.add_step(message.task_id, kind, silo, model, round_)
        self.orch.dispatch.offer([(silo, message)])
        future = self._futures[step.id] = self.orch.dispatch.waiter(step.id)
        future.add_done_callback(lambda _fut: self._finished(step, future))
        return _info(step, future)

    def _finished(self, step: Step, future: asyncio.Future[TaskResult]) -> None:
        """Record a step's metrics; a failure or refusal fails the job."""
        if future.cancelled():
            return
        result = future.result()
        if result.refused:
            self._fail(JobFailed(f"step {step.kind} in silo '{step.silo}': {result.error}"))
            return
        if result.limit is not None:
            self._fail(JobFailed(result.error or f"silo '{step.silo}' stopped the job"))
            return
        if not result.ok:
            self._fail(TaskFailed(step.silo, f"{step.kind} step: {result.error}"))
            return
        if step.kind == StepKind.EVALUATE and result.eval_metrics is not None:
            metric = (step.round, step.silo, "evaluate", result.eval_metrics)
            self.orch.store.add_metrics(self.job_id, [metric])
            self.orch.touch(self.job_id, rounds=[step.round])

    async def step_info(self, step_id: str, wait: float) -> StepInfo:
        """A step's state; with ``wait``, once it finished or ``wait`` seconds have passed."""
        step, future = self.ledger.steps.get(step_id), self._futures.get(step_id)
        if step is None or future is None:
            raise StepRefused(f"job {self.job_id} has no step '{step_id}'")
        self._touched = time.monotonic()
        if wait > 0 and not future.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), wait)
        return _info(step, future)

    def _succeeded(self, step_id: str) -> bool | None:
        future = self._futures[step_id]
        if not future.done():
            return None
        return not future.cancelled() and future.result().ok

    async def aggregate(self, step_ids: tuple[str, ...], round_: int) -> str:
        """Aggregate finished train steps of ``round_``; return the new global model."""
        self._check_open()
        steps = self.ledger.check_aggregate(step_ids, round_, self._succeeded)
        current = await asyncio.to_thread(load_parameters, self.orch.blobs.path(steps[0].model))
        answers = []
        for step in steps:
            out = _Outcome(step.silo, self._futures[step.id].result())
            try:
                path = await self.vetted(round_, out, current, step.model)
            except JobFailed as exc:  # a refused update ends the job, as in a plain round
                self._fail(exc)
                raise
            result = out.result
            samples = result.num_samples or 0
            answers.append(
                Answer(step.silo, result.train_metrics, update=path, num_samples=samples)
            )
        closed = await asyncio.to_thread(self.engine.aggregate, round_, current, answers)
        digest = await asyncio.to_thread(self.orch.blobs.put_parameters, closed.parameters)
        self.ledger.aggregated(steps, round_, digest)
        self.metrics += closed.metrics
        self.close_round(round_, digest)
        log.info("job %s: round %d aggregated from %d silos", self.job_id, round_, len(steps))
        return digest

    def finish(self, model: str) -> None:
        """End the job with ``model`` as its final model."""
        self._check_open()
        self.ledger.model_round(model)
        running = [i for i, f in self._futures.items() if not f.done()]
        if running:
            raise StepRefused(f"steps are still running: {', '.join(running)}")
        self.orch.update_job(self.job_id, detail=None)
        self._done.set_result(model)
