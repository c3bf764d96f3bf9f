"""The orchestrator's engine: task queues with long-poll, silo presence, the FL job loop.

It never reaches into a silo: it can only offer tasks, which agents pull, and read what
agents chose to upload (parameters and metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsilo.api._messages import (
    CheckReport,
    JobInfo,
    JobState,
    RoundInfo,
    SiloCheck,
    SiloStatus,
    StatusReport,
    SubmitRequest,
    TaskKind,
    TaskMessage,
    TaskResult,
)
from fedsilo.errors import FedsiloError, SiloUnavailable, TaskFailed
from fedsilo.jobs import JobSpec, unpack_bundle
from fedsilo.orchestrator._blobs import BlobStore
from fedsilo.orchestrator._db import JobRow, Store, TaskRow
from fedsilo.strategies import Aggregation, build_strategy, weighted_metrics
from fedsilo.tensors import load_parameters, parameters_to_bytes

__all__ = ["HEARTBEAT_SECONDS", "OFFLINE_AFTER_SECONDS", "Orchestrator"]

log = logging.getLogger("fedsilo.orchestrator")

HEARTBEAT_SECONDS = 1.0
OFFLINE_AFTER_SECONDS = 5.0
ONLINE_GRACE_SECONDS = 15.0


@dataclass(frozen=True)
class _Outcome:
    silo: str
    task_id: str
    result: TaskResult


def _fold(aggregation: Aggregation, silo: str, path: Path, num_samples: int) -> None:
    aggregation.add(silo, load_parameters(path), num_samples)


class Orchestrator:
    """State and logic behind the REST API; all methods run on the server's event loop."""

    def __init__(self, *, federation: str, silos: Iterable[str], store: Store, blobs: BlobStore):
        self.federation = federation
        self.silos = tuple(silos)
        self.store = store
        self.blobs = blobs
        self._last_seen: dict[str, float] = {}
        self._busy: dict[str, bool] = {}
        self._wakeup: dict[str, asyncio.Event] = {s: asyncio.Event() for s in self.silos}
        self._waiters: dict[str, asyncio.Future[TaskResult]] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}

    # -- presence ---------------------------------------------------------------------------

    def seen(self, silo: str, *, busy: bool | None = None) -> None:
        """Record that ``silo``'s agent is connected (a poll or a heartbeat)."""
        self._last_seen[silo] = time.time()
        if busy is not None:
            self._busy[silo] = busy

    def online(self, silo: str) -> bool:
        last = self._last_seen.get(silo)
        return last is not None and time.time() - last < OFFLINE_AFTER_SECONDS

    def silo_statuses(self) -> list[SiloStatus]:
        return [
            SiloStatus(
                name=s,
                online=self.online(s),
                last_seen=self._last_seen.get(s),
                busy=self._busy.get(s, False),
            )
            for s in self.silos
        ]

    # -- agent side -------------------------------------------------------------------------

    async def next_task(self, silo: str, wait: float) -> TaskMessage | None:
        """The silo's next task, waiting up to ``wait`` seconds for one to be offered."""
        deadline = time.monotonic() + wait
        event = self._wakeup[silo]
        while True:
            self.seen(silo)
            event.clear()
            row = self.store.claim_task(silo)
            if row is not None:
                return TaskMessage.model_validate_json(row.message_json)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, HEARTBEAT_SECONDS * 2))

    def deliver(self, silo: str, task_id: str, result: TaskResult) -> bool:
        """Record a task's result; False when the task is unknown, not the silo's, or closed."""
        row = self.store.task(task_id)
        if row is None or row.silo != silo or row.state not in ("pending", "assigned"):
            return False
        self.store.finish_task(task_id, ok=result.ok, result_json=result.model_dump_json())
        waiter = self._waiters.pop(task_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
        return True

    def may_read_params(self, silo: str, job_id: str, digest: str) -> bool:
        """Whether ``digest`` is a global model of a job ``silo`` takes part in."""
        job = self.store.job(job_id)
        if job is None or silo not in JobSpec.model_validate_json(job.spec_json).silos:
            return False
        return any(r.global_digest == digest for r in self.store.rounds(job_id))

    def silo_in_job(self, silo: str, job_id: str) -> JobRow | None:
        job = self.store.job(job_id)
        if job is None or silo not in JobSpec.model_validate_json(job.spec_json).silos:
            return None
        return job

    # -- submitter side ---------------------------------------------------------------------

    def submit(self, submitter: str, request: SubmitRequest) -> str:
        """Validate a submission and start its job; return the job id."""
        spec = request.spec
        unknown = [s for s in spec.silos if s not in self.silos]
        if unknown:
            raise FedsiloError(
                f"job '{spec.name}' names silos this federation does not have: "
                f"{', '.join(unknown)} (known: {', '.join(self.silos)})"
            )
        if not self.blobs.has(request.bundle_digest):
            raise FedsiloError("the job's code bundle was not uploaded; submit again")
        bundle = self.blobs.path(request.bundle_digest).read_bytes()
        check_dir = self.blobs.root / f".check-{uuid.uuid4().hex}"
        try:
            manifest = unpack_bundle(bundle, check_dir)
        finally:
            shutil.rmtree(check_dir, ignore_errors=True)
        if manifest.digest != request.manifest_digest:
            raise FedsiloError("the bundle's manifest does not match the submitted digest")
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        self.store.add_job(
            JobRow(
                id=job_id,
                name=spec.name,
                submitter=submitter,
                spec_json=spec.model_dump_json(),
                bundle_digest=request.bundle_digest,
                state=JobState.QUEUED.value,
                current_round=0,
                created_at=time.time(),
            )
        )
        self._runs[job_id] = asyncio.create_task(self._run_job(job_id, spec, request.bundle_digest))
        log.info(
            "job %s submitted by %s: %d silos, %d rounds",
            job_id,
            submitter,
            len(spec.silos),
            spec.rounds,
        )
        return job_id

    def cancel(self, job_id: str) -> bool:
        run = self._runs.get(job_id)
        if run is None or run.done():
            return False
        run.cancel()
        return True

    def job_info(self, job_id: str) -> JobInfo | None:
        row = self.store.job(job_id)
        if row is None:
            return None
        spec = JobSpec.model_validate_json(row.spec_json)
        history: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
        for m in self.store.metrics(job_id):
            history.setdefault(m.round, {"train": {}, "evaluate": {}})[m.phase][m.silo] = (
                json.loads(m.metrics_json)
            )
        seconds = {
            r.round: (r.finished_at - r.started_at) if r.finished_at else None
            for r in self.store.rounds(job_id)
        }
        rounds = [
            RoundInfo(
                round=n,
                seconds=seconds.get(n),
                train=phases["train"],
                evaluate=phases["evaluate"],
                evaluate_aggregate=weighted_metrics(phases["evaluate"])
                if phases["evaluate"]
                else {},
            )
            for n, phases in sorted(history.items())
        ]
        return JobInfo(
            id=row.id,
            name=row.name,
            submitter=row.submitter,
            state=JobState(row.state),
            silos=list(spec.silos),
            rounds=spec.rounds,
            current_round=row.current_round,
            error=row.error,
            detail=row.detail,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            history=rounds,
            has_model=row.model_digest is not None,
        )

    def status(self) -> StatusReport:
        jobs = [info for row in self.store.jobs() if (info := self.job_info(row.id))]
        return StatusReport(federation=self.federation, silos=self.silo_statuses(), jobs=jobs)

    async def check(self, timeout: float) -> CheckReport:
        """Send a no-op task through every silo at once and time each round trip."""
        reachable = {s: self.online(s) for s in self.silos}
        started = time.monotonic()
        ids = {s: self._offer(s, None, TaskKind.PING) for s in self.silos}
        arrived: dict[str, tuple[float, TaskResult]] = {}

        async def wait_one(silo: str) -> None:
            result = await self._waiters[ids[silo]]
            arrived[silo] = (time.monotonic() - started, result)

        waits = [asyncio.create_task(wait_one(s)) for s in self.silos]
        _, late = await asyncio.wait(waits, timeout=timeout)
        for task in late:
            task.cancel()
        lines = []
        for silo in self.silos:
            if silo in arrived:
                rtt, result = arrived[silo]
                lines.append(
                    SiloCheck(
                        silo=silo,
                        reachable=True,
                        ran=result.ok,
                        round_trip_seconds=rtt,
                        error=result.error,
                    )
                )
                continue
            self._close_task(ids[silo])
            error = (
                f"no answer within {timeout:g} s"
                if reachable[silo]
                else "its agent is not connected; start it with `fedsilo up` or "
                "`fedsilo silo start KIT`, then look at its log"
            )
            lines.append(SiloCheck(silo=silo, reachable=reachable[silo], ran=False, error=error))
        return CheckReport(silos=lines)

    # -- the FL job loop --------------------------------------------------------------------

    def _offer(
        self, silo: str, job_id: str | None, kind: TaskKind, *, wait: bool = True, **fields: Any
    ) -> str:
        task_id = uuid.uuid4().hex
        message = TaskMessage(task_id=task_id, kind=kind, job_id=job_id, **fields)
        self.store.add_task(
            TaskRow(
                id=task_id,
                job_id=job_id,
                silo=silo,
                kind=kind.value,
                round=message.round,
                state="pending",
                message_json=message.model_dump_json(),
                created_at=time.time(),
            )
        )
        if wait:
            self._waiters[task_id] = asyncio.get_running_loop().create_future()
        self._wakeup[silo].set()
        return task_id

    def _close_task(self, task_id: str) -> None:
        self._waiters.pop(task_id, None)
        self.store.finish_task(task_id, ok=False, result_json='{"ok":false,"error":"withdrawn"}')

    async def _await_online(self, silos: Iterable[str]) -> None:
        deadline = time.monotonic() + ONLINE_GRACE_SECONDS
        while True:
            offline = [s for s in silos if not self.online(s)]
            if not offline:
                return
            if time.monotonic() > deadline:
                raise SiloUnavailable(
                    offline[0],
                    "is offline: its agent is not connected "
                    f"(offline: {', '.join(offline)}); start it with `fedsilo up` or "
                    "`fedsilo silo start KIT`",
                )
            await asyncio.sleep(0.2)

    def _record(self, job_id: str, round_: int, silo: str, result: TaskResult) -> None:
        if result.train_metrics is not None:
            self.store.add_metrics(job_id, round_, silo, "train", result.train_metrics)
        if result.eval_metrics is not None:
            eval_round = round_ - 1 if result.train_metrics is not None else round_
            self.store.add_metrics(job_id, eval_round, silo, "evaluate", result.eval_metrics)

    def _checked_params(self, silo: str, digest: str | None) -> Path:
        if digest is None or not self.blobs.has(digest):
            raise TaskFailed(silo, "reported parameters it did not upload")
        return self.blobs.path(digest)

    async def _run_job(self, job_id: str, spec: JobSpec, bundle_digest: str) -> None:
        self.store.update_job(job_id, state=JobState.RUNNING.value, started_at=time.time())
        common: dict[str, Any] = {
            "job_name": spec.name,
            "bundle_digest": bundle_digest,
            "entrypoint": spec.entrypoint,
            "hyperparameters": spec.hyperparameters.model_dump(),
        }
        try:
            await self._await_online(spec.silos)
            self.store.update_job(job_id, detail="preprocessing in every silo")
            self.store.start_round(job_id, 0)
            initial: dict[str, str] = {}
            async for out in self._fan_out(job_id, spec, TaskKind.PREPARE, "preprocessing", common):
                initial[out.silo] = self._checked_params(out.silo, out.result.params_digest).name
            global_digest = initial[spec.silos[0]]
            self.store.finish_round(job_id, 0, global_digest)
            strategy = build_strategy(spec.strategy)
            for round_ in range(1, spec.rounds + 1):
                self.store.update_job(job_id, current_round=round_, detail=f"round {round_}")
                self.store.start_round(job_id, round_)
                aggregation = strategy.begin_aggregation(round_, None)
                config = strategy.configure_round(round_, spec.silos)
                async for out in self._fan_out(
                    job_id,
                    spec,
                    TaskKind.FIT,
                    f"round {round_}",
                    common,
                    config,
                    round=round_,
                    params_digest=global_digest,
                    evaluate_first=round_ > 1,
                ):
                    self._record(job_id, round_, out.silo, out.result)
                    path = self._checked_params(out.silo, out.result.params_digest)
                    samples = int((out.result.train_metrics or {}).get("num_samples", 0))
                    await asyncio.to_thread(_fold, aggregation, out.silo, path, samples)
                new_params = await asyncio.to_thread(aggregation.finish)
                global_digest = self.blobs.put_bytes(parameters_to_bytes(new_params))
                self.store.finish_round(job_id, round_, global_digest)
            self.store.update_job(job_id, detail="final evaluation")
            async for out in self._fan_out(
                job_id,
                spec,
                TaskKind.EVALUATE,
                "final evaluation",
                common,
                None,
                round=spec.rounds,
                params_digest=global_digest,
            ):
                self._record(job_id, spec.rounds, out.silo, out.result)
            self.store.update_job(
                job_id,
                state=JobState.SUCCEEDED.value,
                model_digest=global_digest,
                finished_at=time.time(),
                detail=None,
            )
            log.info("job %s succeeded", job_id)
        except asyncio.CancelledError:
            self.store.update_job(
                job_id,
                state=JobState.CANCELLED.value,
                finished_at=time.time(),
                error="cancelled by the submitter",
                detail=None,
            )
            log.info("job %s cancelled", job_id)
        except FedsiloError as exc:
            self.store.update_job(
                job_id,
                state=JobState.FAILED.value,
                finished_at=time.time(),
                error=str(exc),
                detail=None,
            )
            log.warning("job %s failed: %s", job_id, exc)
        except Exception as exc:
            log.exception("job %s failed on an internal error", job_id)
            self.store.update_job(
                job_id,
                state=JobState.FAILED.value,
                finished_at=time.time(),
                error=f"internal error in the orchestrator: {exc!r}",
                detail=None,
            )
        finally:
            self.store.cancel_pending_tasks(job_id)
            for silo in spec.silos:
                self._offer(silo, job_id, TaskKind.RELEASE, wait=False)
            self._runs.pop(job_id, None)

    async def _fan_out(
        self,
        job_id: str,
        spec: JobSpec,
        kind: TaskKind,
        phase: str,
        common: dict[str, Any],
        config: dict[str, dict[str, float]] | None = None,
        **fields: Any,
    ) -> AsyncIterator[_Outcome]:
        """Offer one task per silo of the job; yield results as they arrive.

        A failed task, or a silo whose agent stops heartbeating while its task is open,
        ends the fan-out with an error naming the silo.
        """
        pending: dict[str, str] = {}
        for silo in spec.silos:
            task_id = self._offer(
                silo,
                job_id,
                kind,
                inputs=spec.inputs_for(silo),
                config=(config or {}).get(silo, {}),
                **common,
                **fields,
            )
            pending[task_id] = silo
        futures = {self._waiters[t]: t for t in pending}
        try:
            while pending:
                done, _ = await asyncio.wait(
                    futures, timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                for fut in done:
                    task_id = futures.pop(fut)
                    silo = pending.pop(task_id)
                    result = fut.result()
                    if not result.ok:
                        raise TaskFailed(silo, f"{phase}: {result.error}")
                    yield _Outcome(silo, task_id, result)
                for silo in pending.values():
                    if not self.online(silo):
                        raise SiloUnavailable(silo, f"disconnected during {phase}")
        finally:
            for task_id in pending:
                self._close_task(task_id)
