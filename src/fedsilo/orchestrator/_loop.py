"""An FL job over the running federation: check and preprocess once per silo, then the
rounds, which :class:`~fedsilo.rounds.RoundEngine` decides, driven over the agents' tasks.

The driver sends each phase's tasks, vets every upload before the engine folds it (as
it arrives: memory follows the model's size, not the number of silos), relays secure
aggregation's messages, and keeps what each closed round produced: the global model in
the blob store, the round's record and a checkpoint in the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsilo.api._messages import (
    INLINE_PARAMS_MAX,
    CheckTask,
    EvaluateTask,
    FitTask,
    JobContext,
    JobState,
    JobTask,
    PrepareTask,
    ReleaseTask,
    SecAggTask,
    TaskKind,
    TaskResult,
)
from fedsilo.errors import FedsiloError, JobFailed, SiloUnavailable, TaskFailed
from fedsilo.jobs import JobSpec
from fedsilo.orchestrator._db import CheckpointRow
from fedsilo.orchestrator._resume import CannotResume, restore_strategy, strategy_state
from fedsilo.orchestrator._vetting import UpdateRefused, clipped, vet_update
from fedsilo.privacy import strategy_for
from fedsilo.privacy.secagg import SecAggProtocolError, load_masked, parse_message
from fedsilo.rounds import (
    Answer,
    EngineState,
    Left,
    Metric,
    Missed,
    Phase,
    QuorumLost,
    RoundClosed,
    RoundEngine,
    SetupDone,
)
from fedsilo.rounds._engine import ClientMessage
from fedsilo.strategies import Strategy
from fedsilo.tensors import Parameters, load_parameters

if TYPE_CHECKING:
    from fedsilo.orchestrator._core import Orchestrator

__all__ = ["run_job"]

log = logging.getLogger("fedsilo.orchestrator")

# what a job shows while secure aggregation sets up, by phase
_SECURE_DETAIL = {
    "secure aggregation setup (keys)": "secure aggregation: exchanging keys",
    "secure aggregation setup (shares)": "secure aggregation: sharing secrets",
    "secure aggregation setup (delivery)": "secure aggregation: delivering shares",
}
# how long a silo that disconnected mid-task is waited for (its agent restarting) when the
# job sets no round_timeout; then it has missed the round
RECONNECT_SECONDS = 60.0


@dataclass(frozen=True)
class _Outcome:
    silo: str
    result: TaskResult


def job_context(spec: JobSpec, author: str, bundle_digest: str, silo: str) -> JobContext:
    """What ``silo`` needs to take part in the job of ``spec``: its code, inputs, settings."""
    return JobContext(
        job_name=spec.name,
        bundle_digest=bundle_digest,
        entrypoint=spec.entrypoint,
        inputs=spec.inputs_for(silo),
        hyperparameters=spec.hyperparameters.model_dump(),
        author=author,
        rounds=spec.rounds,
        privacy=spec.privacy,
        computes={step.value: kind for step, kind in spec.computes.items()},
        resources={step.value: request for step, request in spec.resources.items()},
        outputs={
            name: (out.classification.value if out.classification else None)
            for name, out in spec.outputs.items()
        },
        metrics=spec.metrics,
        share_with=spec.share_with,
    )


class _JobRun:
    def __init__(self, orch: Orchestrator, job_id: str, spec: JobSpec, author: str) -> None:
        self.orch = orch
        self.job_id = job_id
        self.spec = spec
        self.author = author
        self.metrics: list[Metric] = []
        self.strategy: Strategy | None = None  # set as the job starts (run)
        self.engine: RoundEngine
        self.resumed: EngineState | None = None  # the engine's state at the checkpoint
        self.resume_from: CheckpointRow | None = None  # a restarted orchestrator's start
        # every parameter file of the job so far, by digest: its round, and what it was
        self.seen: dict[str, tuple[int, str]] = {}

    def context(self, silo: str) -> JobContext:
        """What ``silo`` needs to take part in the job (sent with check and prepare, and to
        an agent that takes the job up again)."""
        bundle = self.orch.bundle_for(silo, self.job_id)
        assert bundle is not None
        return job_context(self.spec, self.author, bundle, silo)

    def task_message(
        self, silo: str, kind: TaskKind, config: Mapping[str, float], **fields: Any
    ) -> JobTask:
        """A task of ``kind`` of this job for ``silo``, with ``fields``.

        Check and prepare carry the job's context; a fit or an evaluation, the bundle's
        digest, which an agent taking the job up again holds its context to.
        """
        task_id = uuid.uuid4().hex
        common = {"task_id": task_id, "job_id": self.job_id, **fields}
        if kind is TaskKind.CHECK:
            return CheckTask(context=self.context(silo), **common)
        if kind is TaskKind.PREPARE:
            return PrepareTask(context=self.context(silo), **common)
        bundle = self.orch.bundle_for(silo, self.job_id)
        assert bundle is not None  # the job is running
        if kind is TaskKind.FIT:
            return FitTask(bundle_digest=bundle, config=dict(config), **common)
        if kind is TaskKind.EVALUATE:
            return EvaluateTask(bundle_digest=bundle, **common)
        if kind is TaskKind.SECAGG:
            return SecAggTask(**common)
        raise ValueError(f"no {kind.value} task is sent in a job's phase")

    async def fan_out(
        self,
        kind: TaskKind,
        phase: str,
        config: dict[str, dict[str, float]] | None = None,
        *,
        silos: Sequence[str] | None = None,
        per_silo: Mapping[str, Mapping[str, Any]] | None = None,
        tolerate: bool = False,
        timeout: float | None = None,
        grace: float = 0.0,
        **fields: Any,
    ) -> AsyncGenerator[_Outcome, None]:
        """Offer one task per silo (the job's, or ``silos``); yield results as they arrive.

        ``per_silo`` adds fields to one silo's task. A failed task, a silo whose agent stops
        heartbeating while its task is open, or one silent past ``timeout`` seconds ends the
        fan-out with an error naming the silo; with ``tolerate`` it is yielded instead, as
        a result that is not ``ok``, and the others go on. A refusal always ends it.

        A disconnected silo is waited for ``grace`` seconds to come back (its agent
        restarted: it is handed its task again), or until ``timeout`` when one is set.
        """
        targets = tuple(self.spec.silos if silos is None else silos)
        extra = per_silo or {}
        messages = [
            (
                silo,
                self.task_message(
                    silo, kind, (config or {}).get(silo, {}), **fields, **extra.get(silo, {})
                ),
            )
            for silo in targets
        ]
        pending = dict(zip(self.orch.dispatch.offer(messages), targets, strict=True))
        futures = {self.orch.dispatch.waiter(t): t for t in pending}
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while pending:
                done, _ = await asyncio.wait(
                    futures, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                for fut in done:
                    silo = pending.pop(futures.pop(fut))
                    result = fut.result()
                    if result.refused:
                        raise JobFailed(f"{phase}: {result.error}")
                    if result.limit is not None and not tolerate:
                        raise JobFailed(result.error or f"silo '{silo}' stopped the job")
                    if not result.ok and not tolerate:
                        raise TaskFailed(silo, f"{phase}: {result.error}")
                    yield _Outcome(silo, result)
                late = deadline is not None and time.monotonic() > deadline
                for task_id, silo in list(pending.items()):
                    if late and not self.orch.dispatch.online(silo):
                        why = (
                            f"disconnected during {phase} and did not come back within "
                            f"{timeout:g} s"
                        )
                    elif late:
                        why = f"did not answer {phase} within {timeout:g} s"
                    elif self.orch.dispatch.online(silo):
                        continue
                    elif deadline is not None and grace > 0:
                        continue  # the deadline decides
                    elif self.orch.dispatch.silent_for(silo) < grace:
                        continue
                    elif grace > 0:
                        why = f"disconnected during {phase} and did not come back in {grace:g} s"
                    else:
                        why = f"disconnected during {phase}"
                    if not tolerate:
                        raise SiloUnavailable(silo, why)
                    del pending[task_id]
                    futures = {f: t for f, t in futures.items() if t != task_id}
                    self.orch.dispatch.withdraw([task_id])
                    yield _Outcome(silo, TaskResult.failed(why))
        finally:
            self.orch.dispatch.withdraw(pending)

    def inline(self, digest: str) -> bytes | None:
        """The global model ``digest``'s file, if small enough to send with each task."""
        path = self.orch.blobs.path(digest)
        if path.stat().st_size > INLINE_PARAMS_MAX:
            return None
        return path.read_bytes()

    def params_path(self, out: _Outcome) -> Path:
        digest = out.result.params_digest
        if digest is None or not self.orch.blobs.has(digest):
            raise TaskFailed(out.silo, "reported parameters it did not upload")
        return self.orch.blobs.path(digest)

    def note(self, round_: int, silo: str, kind: str, text: str, **audit: Any) -> None:
        """Record a note on ``silo``'s update in the job's history and audit log."""
        self._write_note(round_, silo, kind, text, audit)
        self.orch.history_changed(self.job_id, [round_])

    async def note_aside(self, round_: int, silo: str, kind: str, text: str, **audit: Any) -> None:
        """:meth:`note`, written on a worker thread: a note on every silo's update (each
        sent back its global model unchanged) holds no other silo's request up while its
        row is written and its audit entry flushed."""
        await asyncio.to_thread(self._write_note, round_, silo, kind, text, audit)
        self.orch.history_changed(self.job_id, [round_])

    def _write_note(
        self, round_: int, silo: str, kind: str, text: str, audit: dict[str, Any]
    ) -> None:
        log.warning("job %s, round %d: %s", self.job_id, round_, text)
        self.orch.store.add_note(self.job_id, round_, silo, kind, text)
        self.orch.audit.append(
            f"update.{kind}", job_id=self.job_id, round=round_, silo=silo, **audit
        )

    async def vetted(
        self, round_: int, out: _Outcome, current: Parameters, current_digest: str
    ) -> Path:
        """``out``'s update, checked as parameters against the global model ``current``.

        A refused update fails the round naming the silo and the tensor (and is audited).
        An update byte-identical to a file of an earlier round (an upload, a global model)
        is a replay: noted in the job's history, and refused. One identical to the global
        model it was trained from, or to another silo's upload of this round, is noted and
        kept. One past the job's ``updates.max_norm`` with ``over_norm: clip`` is replaced
        by its clipped copy. Returns the file to aggregate.
        """
        path = self.params_path(out)
        digest = path.name
        earlier = self.seen.get(digest)
        if digest == current_digest:
            await self.note_aside(
                round_,
                out.silo,
                "unchanged",
                f"silo '{out.silo}' sent back the global model it was given, unchanged",
                digest=digest,
            )
        elif earlier is not None and earlier[0] == round_:
            await self.note_aside(
                round_,
                out.silo,
                "duplicate",
                f"silo '{out.silo}' sent an update byte-identical to {earlier[1]}",
                digest=digest,
            )
        elif earlier is not None:
            text = f"silo '{out.silo}' sent an update byte-identical to {earlier[1]}"
            await self.note_aside(round_, out.silo, "replay", text, digest=digest)
            raise JobFailed(
                f"round {round_}: silo '{out.silo}' sent an update the orchestrator refuses: "
                f"it is byte-identical to {earlier[1]} (a replay, not this round's training)"
            )
        else:
            self.seen[digest] = (round_, f"the update silo '{out.silo}' sent in round {round_}")
        bounds = self.spec.updates
        try:
            found = await asyncio.to_thread(vet_update, out.silo, path, current, bounds)
        except UpdateRefused as exc:
            self.orch.audit.append(
                "update.refused",
                job_id=self.job_id,
                round=round_,
                silo=out.silo,
                tensor=exc.tensor,
                reason=exc.reason,
                digest=digest,
            )
            raise JobFailed(f"round {round_}: {exc}") from None
        if found.scale >= 1.0:
            return path
        params = await asyncio.to_thread(lambda: dict(clipped(path, current, found.scale)))
        digest = await asyncio.to_thread(self.orch.blobs.put_parameters, params)
        await self.note_aside(
            round_,
            out.silo,
            "clipped",
            f"silo '{out.silo}''s update moved the model by {found.relative:.4g} of its norm; "
            f"clipped to the job's bound of {bounds.max_norm:g}",
            relative_norm=found.relative,
            scale=found.scale,
            digest=digest,
        )
        return self.orch.blobs.path(digest)

    async def checkpoint(self) -> tuple[str | None, str] | None:
        """The strategy's and the round engine's state, to save with the round (the
        strategy's arrays as a blob)."""
        if self.strategy is None:
            return None
        arrays, meta = strategy_state(self.strategy)
        meta["engine"] = self.engine.state().as_dict()
        digest = None
        if arrays:
            digest = await asyncio.to_thread(self.orch.blobs.put_parameters, arrays)
        return digest, json.dumps(meta)

    def close_round(
        self, round_: int, digest: str | None, checkpoint: tuple[str | None, str] | None = None
    ) -> None:
        """Record a closed round (its global model, metrics and checkpoint, in one
        transaction) and publish its model."""
        if digest is not None:
            self.seen.setdefault(digest, (round_, f"the global model of round {round_}"))
        # on the loop: one short transaction, which measured cheaper here than a thread
        # hop (about 15 % of a 10-silo round's overhead, bench/round_overhead.py)
        self.orch.store.finish_round(
            self.job_id, round_, digest, self.metrics, checkpoint=checkpoint
        )
        self.orch.track_round(self.job_id, self.metrics)
        changed = [round_, *(n for n, *_ in self.metrics)]
        self.metrics = []
        if digest is not None:
            self.orch.publish_global(self.job_id, digest)
        self.orch.touch(self.job_id, rounds=changed)

    def missed(self, round_: int, phase: str, silo: str, why: str) -> None:
        """Record that ``silo`` took no part in ``phase`` of ``round_``, and why."""
        text = f"silo '{silo}' took no part in {phase}: {why}"
        self.note(round_, silo, "missed", text, phase=phase)

    def left(self, gone: list[Left]) -> None:
        """Record the silos the engine reports gone from a phase."""
        for out in gone:
            if not out.for_good:
                self.missed(out.round, out.phase, out.silo, out.why)
                continue
            log.warning(
                "job %s: silo %s dropped from secure aggregation: %s",
                self.job_id,
                out.silo,
                out.why,
            )
            self.orch.audit.append(
                "secagg.dropped", job_id=self.job_id, silo=out.silo, reason=out.why
            )

    async def answer(self, phase: Phase, out: _Outcome, digest: str) -> Answer | Missed:
        """A silo's result as the engine takes it: a plain update vetted against the global
        model, a masked one or secure-aggregation messages read and checked as such."""
        result, silo = out.result, out.silo
        if not result.ok:
            return Missed(silo, result.error or "no answer")
        samples = result.num_samples or 0
        if phase.kind is TaskKind.EVALUATE:
            return Answer(silo, eval_metrics=result.eval_metrics)
        secure = self.spec.privacy.secure_aggregation is not None
        try:
            if phase.kind is TaskKind.SECAGG:
                messages = [_parse(silo, text) for text in result.secagg]
                return Answer(silo, secagg=messages)
            if secure:
                masked = await asyncio.to_thread(
                    load_masked,
                    self.params_path(out),
                    job_id=self.job_id,
                    sender=silo,
                    round_=phase.round,
                )
                return Answer(
                    silo,
                    result.train_metrics,
                    result.eval_metrics,
                    num_samples=samples,
                    secagg=[masked],
                )
        except (SecAggProtocolError, TaskFailed) as exc:
            return Missed(silo, str(exc))
        current = self.engine.current
        assert current is not None
        path = await self.vetted(phase.round, out, current, digest)
        return Answer(
            silo, result.train_metrics, result.eval_metrics, update=path, num_samples=samples
        )

    async def run_phase(self, phase: Phase, digest: str) -> None:
        """Send ``phase``'s tasks (the global model ``digest`` to train or evaluate from);
        feed the engine every answer as it arrives."""
        orch, job_id = self.orch, self.job_id
        if phase.kind is TaskKind.FIT:
            orch.store.start_round(job_id, phase.round)
            orch.update_job(job_id, current_round=phase.round, detail=phase.name)
        elif phase.kind is TaskKind.EVALUATE:
            orch.update_job(job_id, detail=phase.name)
        else:
            detail = _SECURE_DETAIL.get(phase.name, f"round {phase.round}: unmasking the sum")
            orch.update_job(job_id, detail=detail)
        per_silo: dict[str, dict[str, Any]] = {}
        inline = self.inline(digest) if phase.kind is not TaskKind.SECAGG else None
        for task in phase.tasks:
            fields: dict[str, Any] = {}
            if task.kind is not TaskKind.SECAGG:
                fields["params_digest"] = digest
                if inline is not None:
                    fields["params"] = inline
            if task.kind is TaskKind.FIT:
                fields.update(evaluate_first=task.evaluate_first)
                if task.mask_plan is not None:
                    fields.update(mask_weight=task.mask_weight, mask_plan=task.mask_plan)
            elif task.secagg is not None:
                fields["secagg"] = task.secagg.model_dump_json()
            per_silo[task.silo] = fields
        outcomes = self.fan_out(
            phase.kind,
            phase.name,
            {task.silo: dict(task.config) for task in phase.tasks},
            silos=phase.silos,
            per_silo=per_silo,
            tolerate=phase.tolerate,
            timeout=phase.timeout,
            grace=RECONNECT_SECONDS if phase.reconnect else 0.0,
            round=phase.round,
        )
        engine = self.engine
        async with aclosing(outcomes) as answers:
            async for out in answers:
                event = await self.answer(phase, out, digest)
                # folding an update or adding a masked one is work for a thread; the rest
                # (a miss, an evaluation, a protocol message) is quicker fed here
                heavy = phase.kind is TaskKind.FIT and isinstance(event, Answer)
                try:
                    self.left(
                        await asyncio.to_thread(engine.feed, event) if heavy else engine.feed(event)
                    )
                except QuorumLost as exc:
                    self.left(exc.left)
                    raise

    async def check(self) -> None:
        """Have every silo check the job before anything of it runs anywhere.

        A silo refuses here what it can tell it will not run (an input its catalog lacks, a
        compute kind it has none of, resources past its computes): the job fails with the
        silo's reason before any silo downloads its code, asks for approval or preprocesses.
        """
        self.orch.update_job(self.job_id, detail="checking the job in every silo")
        checks = self.fan_out(TaskKind.CHECK, "checking the job", grace=RECONNECT_SECONDS)
        async with aclosing(checks) as outcomes:
            async for _ in outcomes:
                pass

    async def prepare(self) -> str:
        """Check the job in every silo, preprocess there and start its job worker; return
        the initial model's digest.

        Every silo builds the model from the job's seed; the first silo's is the global one.
        """
        orch, spec, job_id = self.orch, self.spec, self.job_id
        await orch.dispatch.await_online(spec.silos)
        await self.check()
        orch.update_job(job_id, detail="preprocessing in every silo")
        orch.store.start_round(job_id, 0)
        initial: dict[str, str] = {}
        prepare = self.fan_out(
            TaskKind.PREPARE,
            "preprocessing",
            grace=RECONNECT_SECONDS,
        )
        paths: dict[str, Path] = {}
        async with aclosing(prepare) as outcomes:
            async for out in outcomes:
                paths[out.silo] = self.params_path(out)
                initial[out.silo] = paths[out.silo].name
        first = spec.silos[0]
        try:
            model = await asyncio.to_thread(load_parameters, paths[first])
        except FedsiloError:
            raise JobFailed(
                f"preprocessing: silo '{first}' sent an initial model that is not a "
                "safetensors file"
            ) from None
        for silo in spec.silos:  # the same layout everywhere, and nothing but finite numbers
            try:
                await asyncio.to_thread(vet_update, silo, paths[silo], model)
            except UpdateRefused as exc:
                orch.audit.append(
                    "update.refused",
                    job_id=job_id,
                    round=0,
                    silo=silo,
                    tensor=exc.tensor,
                    reason=exc.reason,
                    digest=initial[silo],
                )
                raise JobFailed(
                    f"preprocessing: {exc} (the initial model of silo '{first}')"
                ) from None
        del model
        global_digest = initial[first]
        self.close_round(0, global_digest, await self.checkpoint())
        return global_digest

    async def resume(self, saved: CheckpointRow) -> str:
        """Go on from ``saved``: its strategy state back in, every global model of the job
        fetchable again, the uploads known for replay checks; return its global digest."""
        orch = self.orch
        assert self.strategy is not None
        for digest in (saved.global_digest, saved.state_digest):
            if digest is not None and not orch.blobs.has(digest):
                raise CannotResume(f"the file {digest[:12]} of its round {saved.round} is gone")
        arrays: Parameters = {}
        if saved.state_digest is not None:
            arrays = await asyncio.to_thread(load_parameters, orch.blobs.path(saved.state_digest))
        restore_strategy(self.strategy, arrays, saved.state_json)
        engine = json.loads(saved.state_json).get("engine")
        try:
            self.resumed = None if engine is None else EngineState.from_dict(engine)
        except ValueError as exc:
            raise CannotResume(str(exc)) from None
        for row in orch.store.rounds(self.job_id):
            if row.global_digest is not None and row.round <= saved.round:
                orch.publish_global(self.job_id, row.global_digest)
                self.seen.setdefault(
                    row.global_digest, (row.round, f"the global model of round {row.round}")
                )
        for round_, silo, digest in orch.store.uploads(self.job_id):
            if round_ <= saved.round:
                self.seen.setdefault(
                    digest, (round_, f"the update silo '{silo}' sent in round {round_}")
                )
        return saved.global_digest

    async def run(self) -> str:
        """Run every phase; return the final global model's digest."""
        orch, spec, job_id = self.orch, self.spec, self.job_id
        self.strategy = strategy_for(spec.strategy, spec.privacy)
        engine = self.engine = RoundEngine(spec, self.strategy, job_id=job_id)
        saved = self.resume_from
        digest = await self.prepare() if saved is None else await self.resume(saved)
        current = await asyncio.to_thread(load_parameters, orch.blobs.path(digest))
        if saved is None:
            engine.start(current)
        else:
            engine.resume(current, saved.round, self.resumed)
        while True:
            step = await asyncio.to_thread(engine.next)
            if isinstance(step, Phase):
                await self.run_phase(step, digest)
            elif isinstance(step, SetupDone):
                orch.audit.append(
                    "secagg.ready",
                    job_id=job_id,
                    members=list(step.members),
                    threshold=step.threshold,
                )
            elif isinstance(step, RoundClosed):
                digest = orch.blobs.put_parameters(step.parameters)
                self.metrics += step.metrics
                self.close_round(step.round, digest, await self.checkpoint())
            else:
                self.metrics += step.metrics
                await asyncio.to_thread(
                    orch.store.finish_round, job_id, spec.rounds, digest, self.metrics
                )
                orch.history_changed(job_id, [spec.rounds, *(n for n, *_ in self.metrics)])
                return digest


def _parse(silo: str, text: str) -> ClientMessage:
    """One of ``silo``'s secure-aggregation messages, sent as itself."""
    message = parse_message(text)
    if not isinstance(message, ClientMessage):
        raise SecAggProtocolError(f"silo '{silo}' sent a {type(message).__name__}")
    return message


async def run_job(
    orch: Orchestrator,
    job_id: str,
    spec: JobSpec,
    author: str,
    runner: _JobRun | None = None,
    *,
    resumed: bool = False,
) -> None:
    """Run an FL job to its end, recording success, failure or cancellation.

    ``runner`` drives the job: by default the scatter-gather loop of its spec. A
    ``resumed`` job keeps its start time (its runner goes on from a checkpoint).
    """
    if resumed:
        orch.update_job(job_id, state=JobState.RUNNING.value, detail="resumed")
    else:
        orch.update_job(job_id, state=JobState.RUNNING.value, started_at=time.time())
    orch.track_start(job_id, spec, author)
    outcome: dict[str, Any]
    try:
        digest = await (runner or _JobRun(orch, job_id, spec, author)).run()
        outcome = {"state": JobState.SUCCEEDED.value, "model_digest": digest}
        log.info("job %s succeeded", job_id)
    except asyncio.CancelledError:
        who = orch.cancelled_by.pop(job_id, "its submitter")
        outcome = {"state": JobState.CANCELLED.value, "error": f"cancelled by {who}"}
        log.info("job %s cancelled", job_id)
    except FedsiloError as exc:
        outcome = {"state": JobState.FAILED.value, "error": str(exc)}
        log.warning("job %s failed: %s", job_id, exc)
    except Exception as exc:
        log.exception("job %s failed on an internal error", job_id)
        outcome = {
            "state": JobState.FAILED.value,
            "error": f"internal error in the orchestrator: {exc!r}",
        }
    orch.store.cancel_pending_tasks(job_id)
    orch.update_job(job_id, finished_at=time.time(), detail=None, **outcome)
    orch.audit.append("job.finished", job_id=job_id, **outcome)
    info = await orch.job_info(job_id)
    if info is not None:
        orch.track(info, spec, outcome.get("model_digest"))
    orch.dispatch.offer(
        [(silo, ReleaseTask(task_id=uuid.uuid4().hex, job_id=job_id)) for silo in spec.silos],
        wait=False,
    )
    orch.job_finished(job_id)
