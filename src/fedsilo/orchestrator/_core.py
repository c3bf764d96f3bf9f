"""The orchestrator's engine: task queues with long-poll, silo presence, job bookkeeping.

It never reaches into a silo: it can only offer tasks, which agents pull, and read what
agents chose to upload (parameters and metrics). Dispatch state (queues, open tasks,
waiters) lives in memory on the event loop; every task, round and metric is also written
to the database, which is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsilo._suggest import did_you_mean, listing
from fedsilo.api._messages import (
    CheckReport,
    JobContext,
    JobInfo,
    JobState,
    JobTask,
    PingTask,
    ReleaseTask,
    RoundInfo,
    RoundNote,
    SiloCheck,
    StatusReport,
    SubmitRequest,
    TaskResult,
)
from fedsilo.audit import AuditLog
from fedsilo.errors import FedsiloError, StepRefused
from fedsilo.jobs import JobSpec, Manifest, PipelineStyle, unpack_bundle
from fedsilo.orchestrator._access import JobAccess, View, summary
from fedsilo.orchestrator._blobs import BlobStore
from fedsilo.orchestrator._db import JobRow, Store
from fedsilo.orchestrator._dispatch import Dispatch
from fedsilo.orchestrator._literal import LiteralRun
from fedsilo.strategies import weighted_metrics
from fedsilo.tracking import LiveTracking, RoundRecord, Tracker

__all__ = ["Orchestrator"]

log = logging.getLogger("fedsilo.orchestrator")

# how many of the most recent jobs a list looks through for those its caller may see
_SCAN_JOBS = 1000


@dataclass
class _LiveJob:
    """In-memory facts about a job this process runs, for the hot paths."""

    silos: frozenset[str]
    bundle_digest: str
    access: JobAccess  # who may reach it (the access table's facts)
    global_digests: set[str] = field(default_factory=set)
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    info: JobInfo | None = None
    # the history as last read, by round, and the first round whose records changed since
    # (None: none did): a reading reads again only the rounds from there on
    rounds: dict[int, RoundInfo] = field(default_factory=dict)
    stale_from: int | None = 0


class Orchestrator:
    """State and logic behind the REST API; every method runs on the server's event loop."""

    def __init__(
        self,
        *,
        federation: str,
        silos: Iterable[str],
        store: Store,
        blobs: BlobStore,
        audit: AuditLog,
        tracker: Tracker | None = None,
    ) -> None:
        self.federation = federation
        self.audit = audit
        self.tracker = tracker
        # MLflow logging runs on one thread of its own, in order, off the event loop
        self._tracking = LiveTracking(tracker) if tracker is not None else None
        self.store = store
        self.blobs = blobs
        self.dispatch = Dispatch(
            federation=federation,
            silos=silos,
            store=store,
            audit=audit,
            on_rejoin=self._note_rejoin,
            on_progress=lambda job_id, detail: self.update_job(job_id, detail=detail),
        )
        self._live: dict[str, _LiveJob] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self.cancelled_by: dict[str, str] = {}  # job id -> who cancelled it
        self._literal: dict[str, LiteralRun] = {}

    @property
    def silos(self) -> tuple[str, ...]:
        """The federation's silos now (members come and go while it runs)."""
        return self.dispatch.silos

    def _note_rejoin(self, silo: str, message: PingTask | JobTask) -> None:
        """Note in a job's history that ``silo`` takes its task up again after a restart."""
        if message.job_id is None:
            return
        self.store.add_note(
            message.job_id,
            message.round,
            silo,
            "rejoined",
            f"silo '{silo}' restarted its agent during its {message.kind.value} task of round "
            f"{message.round}; the task was handed to the new agent",
        )
        self.touch(message.job_id, rounds=[message.round])

    # -- what a silo may fetch --------------------------------------------------------------

    def job_access(self, job_id: str) -> JobAccess | None:
        """Who may reach job ``job_id`` (``None``: no such job); from memory while it runs,
        so that a silo's per-round calls cost no database read."""
        live = self._live.get(job_id)
        if live is not None:
            return live.access
        row = self.store.job(job_id)
        return None if row is None else JobAccess.of(row.submitter, row.spec_json)

    def bundle_for(self, silo: str, job_id: str) -> str | None:
        """The bundle digest of a running job ``silo`` takes part in."""
        live = self._live.get(job_id)
        return live.bundle_digest if live is not None and silo in live.silos else None

    def context_for(self, silo: str, job_id: str) -> JobContext | None:
        """The context of a running job ``silo`` takes part in, for an agent that takes the
        job up again (it restarted, and holds nothing of the job)."""
        from fedsilo.orchestrator._loop import job_context

        bundle = self.bundle_for(silo, job_id)
        row = self.store.job(job_id) if bundle is not None else None
        if bundle is None or row is None:
            return None
        return job_context(JobSpec.model_validate_json(row.spec_json), row.submitter, bundle, silo)

    def may_read_params(self, silo: str, job_id: str, digest: str) -> bool:
        """Whether ``digest`` is a global model of a running job ``silo`` takes part in."""
        live = self._live.get(job_id)
        return live is not None and silo in live.silos and digest in live.global_digests

    # -- jobs -------------------------------------------------------------------------------

    def _unpacked(self, bundle_digest: str) -> Manifest:
        """The manifest of an uploaded bundle, unpacked (and checked) in a scratch folder."""
        check_dir = self.blobs.root / f".check-{uuid.uuid4().hex}"
        try:
            return unpack_bundle(self.blobs.path(bundle_digest).read_bytes(), check_dir)
        finally:
            shutil.rmtree(check_dir, ignore_errors=True)

    async def submit(self, submitter: str, request: SubmitRequest) -> str:
        """Validate a submission and start its job; return the job id.

        The bundle is unpacked and its manifest checked on a worker thread: a large bundle
        holds up no silo's long-poll.
        """
        from fedsilo.orchestrator._loop import run_job

        spec = request.spec
        unknown = [s for s in spec.silos if s not in self.silos]
        if unknown:
            named = ", ".join(f"'{s}'{did_you_mean(s, self.silos)}" for s in unknown)
            raise FedsiloError(
                f"job '{spec.name}' names silos this federation does not have: {named}; "
                f"its silos: {listing(self.silos)}"
            )
        if not self.blobs.has(request.bundle_digest):
            raise FedsiloError("the job's code bundle was not uploaded; submit again")
        manifest = await asyncio.to_thread(self._unpacked, request.bundle_digest)
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
        self._live[job_id] = _LiveJob(
            silos=frozenset(spec.silos),
            bundle_digest=request.bundle_digest,
            access=JobAccess(submitter, tuple(spec.share_with), tuple(spec.silos)),
        )
        self.audit.append(
            "job.submitted",
            job_id=job_id,
            job_name=spec.name,
            submitter=submitter,
            bundle_digest=request.bundle_digest,
            manifest_digest=manifest.digest,
            silos=list(spec.silos),
            rounds=spec.rounds,
            shared_with=list(spec.share_with),
        )
        runner = None
        if spec.pipeline is PipelineStyle.LITERAL:
            runner = self._literal[job_id] = LiteralRun(self, job_id, spec, submitter)
        self._runs[job_id] = asyncio.create_task(run_job(self, job_id, spec, submitter, runner))
        log.info(
            "job %s submitted by %s: %d silos, %d rounds",
            job_id,
            submitter,
            len(spec.silos),
            spec.rounds,
        )
        return job_id

    def resume_unfinished(self) -> tuple[list[str], list[str]]:
        """Go on with the jobs an earlier process left running (at start-up, on the loop).

        A scatter-gather job resumes at its last closed round (the round in flight is
        redone) and a queued one starts; a job that cannot go on is failed saying why, and
        its silos are told to release it. Returns the ids resumed and failed.
        """
        from fedsilo.orchestrator._loop import _JobRun, run_job

        resumed: list[str] = []
        failed: list[str] = []
        for row in self.store.unfinished_jobs():
            self.store.close_open_tasks(row.id)
            try:
                spec = JobSpec.model_validate_json(row.spec_json)
            except ValueError:
                spec = None
            why = self._why_not_resume(row, spec)
            if why is not None or spec is None:
                reason = f"the orchestrator restarted while the job ran, and {why}"
                self.store.update_job(
                    row.id, state=JobState.FAILED.value, error=reason, finished_at=time.time()
                )
                self.audit.append("job.finished", job_id=row.id, state="failed", error=reason)
                if spec is not None:
                    self.dispatch.offer(
                        [
                            (
                                silo,
                                ReleaseTask(task_id=uuid.uuid4().hex, job_id=row.id),
                            )
                            for silo in spec.silos
                            if silo in self.silos
                        ],
                        wait=False,
                    )
                failed.append(row.id)
                continue
            saved = self.store.checkpoint(row.id)
            self._live[row.id] = _LiveJob(
                silos=frozenset(spec.silos),
                bundle_digest=row.bundle_digest,
                access=JobAccess(row.submitter, tuple(spec.share_with), tuple(spec.silos)),
            )
            runner = _JobRun(self, row.id, spec, row.submitter)
            runner.resume_from = saved
            self.audit.append(
                "job.resumed", job_id=row.id, round=saved.round if saved is not None else None
            )
            log.info(
                "job %s resumed %s",
                row.id,
                f"after round {saved.round}" if saved is not None else "from the start",
            )
            self._runs[row.id] = asyncio.create_task(
                run_job(self, row.id, spec, row.submitter, runner, resumed=saved is not None)
            )
            resumed.append(row.id)
        return resumed, failed

    def _why_not_resume(self, row: JobRow, spec: JobSpec | None) -> str | None:
        """Why the job of ``row`` cannot go on after a restart, or ``None`` if it can."""
        if spec is None:
            return "its stored spec no longer reads as a job spec of this version"
        if spec.pipeline is PipelineStyle.LITERAL:
            return "a literal pipeline's loop ran in its submitter's process; submit it again"
        unknown = [s for s in spec.silos if s not in self.silos]
        if unknown:
            return f"the federation no longer has silo(s) {', '.join(unknown)}"
        if not self.blobs.has(row.bundle_digest):
            return "its code bundle is no longer in the orchestrator's storage"
        return None

    def update_job(self, job_id: str, **values: Any) -> None:
        """Change a job's record and wake whoever waits on it."""
        self.store.update_job(job_id, **values)
        self.touch(job_id)

    def touch(self, job_id: str, *, rounds: Iterable[int] = ()) -> None:
        """Wake whoever waits on the job's record, which changed; ``rounds``: the rounds
        whose history records (metrics, notes, times) changed with it."""
        live = self._live.get(job_id)
        if live is not None:
            self.history_changed(job_id, rounds)
            live.version += 1
            live.info = None
            live.changed.set()
            live.changed = asyncio.Event()

    def history_changed(self, job_id: str, rounds: Iterable[int]) -> None:
        """Note that the history records of ``rounds`` changed, so the next reading of the
        job reads them again (without waking whoever waits: the next :meth:`touch` does).

        Every write of a running job's metrics, notes or round times says so here or
        through :meth:`touch`; the rounds before the first changed one are not read again.
        """
        live = self._live.get(job_id)
        first = min(rounds, default=None)
        if live is None or first is None:
            return
        live.stale_from = first if live.stale_from is None else min(live.stale_from, first)
        live.info = None

    def publish_global(self, job_id: str, digest: str) -> None:
        """Let the job's silos fetch ``digest`` as a global model."""
        self._live[job_id].global_digests.add(digest)

    def job_finished(self, job_id: str) -> None:
        """Forget a job's in-memory state once its run ended."""
        self.touch(job_id)
        self._live.pop(job_id, None)
        self._runs.pop(job_id, None)
        self._literal.pop(job_id, None)

    def literal(self, job_id: str, submitter: str) -> LiteralRun:
        """The running literal pipeline ``job_id``, which only its own submitter drives."""
        run = self._literal.get(job_id)
        if run is None:
            row = self.store.job(job_id)
            if row is None:
                raise StepRefused(f"no job '{job_id}'")
            raise StepRefused(
                f"job '{job_id}' is not a running literal pipeline (state: {row.state})"
                + (f": {row.error}" if row.error else "")
            )
        if run.author != submitter:
            raise StepRefused(
                f"job '{job_id}' belongs to submitter '{run.author}'; only it drives the job"
            )
        return run

    def track_open(self) -> None:
        """Open the MLflow store in the background as the orchestrator starts (queued)."""
        if self._tracking is not None:
            self._tracking.open()

    def track_start(self, job_id: str, spec: JobSpec, submitter: str) -> None:
        """Open the job's MLflow run as the job starts (queued: never blocks, never fails it)."""
        if self._tracking is not None:
            params = spec.model_dump(mode="json")
            self._tracking.start(
                job_id, spec.name, params, submitter=submitter, readers=spec.share_with
            )

    def track_round(self, job_id: str, metrics: Sequence[RoundRecord]) -> None:
        """Log the metrics a round closed with, ``(round, silo, phase, metrics)``, queued."""
        if self._tracking is not None:
            self._tracking.rounds(job_id, metrics)

    def track(self, info: JobInfo, spec: JobSpec, model_digest: str | None) -> None:
        """Complete a finished job's MLflow run in the background: what the rounds did not
        log yet, the final model and the job's state. A tracking failure is only logged."""
        if self._tracking is None:
            return
        model = self.blobs.path(model_digest) if model_digest else None
        self._tracking.finish(
            info.id,
            info.name,
            spec.model_dump(mode="json"),
            info.history,
            model,
            info.state.value,
        )

    def track_flush(self, timeout: float | None = None) -> bool:
        """Wait until every tracking call queued so far is done; False on timeout."""
        return True if self._tracking is None else self._tracking.flush(timeout)

    def track_close(self, timeout: float | None = None) -> bool:
        """As the orchestrator stops: log what tracking holds (every job that ended is
        complete in the store), then stop its thread; False if ``timeout`` ran out."""
        return True if self._tracking is None else self._tracking.close(timeout)

    def cancel(self, job_id: str, by: str | None = None) -> bool:
        """Cancel the running job ``job_id`` (``by``: who asked, for its record)."""
        run = self._runs.get(job_id)
        if run is None or run.done():
            return False
        self.cancelled_by[job_id] = by or "its submitter"
        run.cancel()
        return True

    async def job_info(self, job_id: str, *, after: int = -1, wait: float = 0.0) -> JobInfo | None:
        """A job's state and history; with ``wait``, first wait for a version past ``after``."""
        live = self._live.get(job_id)
        if live is not None and wait > 0 and live.version <= after:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.changed.wait(), timeout=wait)
            live = self._live.get(job_id)
        if live is None:
            return self._read_job(job_id, 1 << 30)
        if live.info is None:
            # a running job's history grows by the round: only the rounds whose records
            # changed since the last reading are read again, so following a long job
            # costs the same in its last round as in its first
            live.info = self._read_job(
                job_id, live.version, known=live.rounds, since=live.stale_from
            )
            live.stale_from = None
            if live.info is not None:
                live.rounds = {r.round: r for r in live.info.history}
        return live.info

    def _read_job(
        self,
        job_id: str,
        version: int,
        *,
        known: dict[int, RoundInfo] | None = None,
        since: int | None = 0,
    ) -> JobInfo | None:
        """A job's record as :class:`JobInfo`; the rounds of its history before ``since``
        taken from ``known``, the others read (``since`` None: every round from ``known``).

        A record that cannot be read as written (a spec an older version wrote, a metric
        that is not a finite number) is read leniently, what cannot be read left out and
        logged: one bad record never stops ``status`` or ``job show`` from answering."""
        row = self.store.job(job_id)
        if row is None:
            return None
        silos, planned = _spec_facts(job_id, row.spec_json)
        raw = _raw_spec(row.spec_json)
        access = JobAccess.from_spec(row.submitter, raw)
        kept = sorted((known or {}).items())
        if since is None:  # no round's records changed since ``known`` was read
            rounds = [r for _, r in kept]
        else:
            rounds = [r for n, r in kept if n < since] + self._read_rounds(job_id, since)
        state, error = _state(row)
        return JobInfo(
            id=row.id,
            name=row.name,
            submitter=row.submitter,
            state=state,
            silos=silos,
            rounds=planned,
            current_round=row.current_round,
            error=error,
            detail=row.detail,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            history=rounds,
            has_model=row.model_digest is not None,
            version=version,
            shared_with=list(access.readers),
            outputs=_outputs(raw),
        )

    def _read_rounds(self, job_id: str, since: int) -> list[RoundInfo]:
        """The job's history from round ``since`` on, as its records stand."""
        history: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
        for m in self.store.metrics(job_id, since=since):
            phases = history.setdefault(m.round, {"train": {}, "evaluate": {}, "privacy": {}})
            if m.phase in phases:
                phases[m.phase][m.silo] = _finite_metrics(job_id, m.round, m.silo, m.metrics_json)
        seconds = {
            r.round: (r.finished_at - r.started_at) if r.finished_at else None
            for r in self.store.rounds(job_id, since=since)
        }
        notes: dict[int, list[RoundNote]] = {}
        for note in self.store.notes(job_id, since=since):
            history.setdefault(note.round, {"train": {}, "evaluate": {}, "privacy": {}})
            notes.setdefault(note.round, []).append(
                RoundNote(silo=note.silo, kind=note.kind, text=note.text)
            )
        return [
            RoundInfo(
                round=n,
                seconds=seconds.get(n),
                train=phases["train"],
                evaluate=phases["evaluate"],
                evaluate_aggregate=weighted_metrics(phases["evaluate"])
                if phases["evaluate"]
                else {},
                privacy=next(iter(phases["privacy"].values()), {}),
                notes=notes.get(n, []),
            )
            for n, phases in sorted(history.items())
        ]

    async def visible_jobs(
        self, visible: Callable[[JobAccess], View | None], *, limit: int = 50
    ) -> list[JobInfo]:
        """The ``limit`` most recent jobs that ``visible`` lets a caller see, each as it may
        see it (:func:`~fedsilo.orchestrator._access.summary` for a summary view)."""
        jobs: list[JobInfo] = []
        for row in self.store.jobs(limit=_SCAN_JOBS):
            seen = visible(JobAccess.of(row.submitter, row.spec_json))
            if seen is None:
                continue
            try:
                info = await self.job_info(row.id)
            except ValueError as exc:  # a record even a lenient reading cannot make sense of
                log.warning(
                    "job %s left out of the status: its record is unreadable (%s)", row.id, exc
                )
                continue
            if info is not None:
                jobs.append(summary(info) if seen is View.SUMMARY else info)
            if len(jobs) >= limit:
                break
        return jobs

    async def status(
        self,
        *,
        visible: Callable[[JobAccess], View | None] = lambda _job: View.FULL,
        silos: Iterable[str] | None = None,
    ) -> StatusReport:
        """The federation at a glance: the silos (``silos``: those alone) and the jobs
        ``visible`` lets the caller see."""
        return StatusReport(
            federation=self.federation,
            silos=self.dispatch.silo_statuses(silos),
            jobs=await self.visible_jobs(visible),
        )

    # -- connectivity check -----------------------------------------------------------------

    async def check(self, timeout: float) -> CheckReport:
        """Send a no-op task through every silo at once and time each round trip."""
        reachable = {s: self.dispatch.online(s) for s in self.silos}
        started = time.monotonic()
        ids = dict(
            zip(
                self.silos,
                self.dispatch.offer([(s, PingTask(task_id=uuid.uuid4().hex)) for s in self.silos]),
                strict=True,
            )
        )
        arrived: dict[str, tuple[float, TaskResult]] = {}

        async def wait_one(silo: str) -> None:
            result = await self.dispatch.waiter(ids[silo])
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
            self.dispatch.withdraw([ids[silo]])
            error = (
                f"no answer within {timeout:g} s"
                if reachable[silo]
                else "its agent is not connected; its silo's administrator starts it "
                "(`fedsilo silo start --kit KIT` on the silo's machine) and reads its log"
            )
            lines.append(SiloCheck(silo=silo, reachable=reachable[silo], ran=False, error=error))
        return CheckReport(silos=lines)


def _spec_facts(job_id: str, spec_json: str) -> tuple[list[str], int]:
    """The silos and rounds of a stored job spec, read leniently if it no longer validates."""
    try:
        spec = JobSpec.model_validate_json(spec_json)
    except ValueError as exc:
        log.warning("job %s: its stored spec no longer validates (%s); read leniently", job_id, exc)
    else:
        return list(spec.silos), spec.rounds
    try:
        raw = json.loads(spec_json)
    except ValueError:
        return [], 0
    if not isinstance(raw, dict):
        return [], 0
    silos = raw.get("silos")
    rounds = raw.get("rounds")
    return (
        [s for s in silos if isinstance(s, str)] if isinstance(silos, list) else [],
        rounds if isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 0 else 0,
    )


def _raw_spec(spec_json: str) -> object:
    """A stored spec as JSON, unvalidated (``None`` if it is not JSON)."""
    try:
        return json.loads(spec_json)
    except ValueError:
        return None


def _outputs(raw: object) -> dict[str, str]:
    """A stored spec's outputs and their declared classifications, read leniently."""
    outputs = raw.get("outputs") if isinstance(raw, dict) else None
    if not isinstance(outputs, dict):
        return {}
    found: dict[str, str] = {}
    for name, out in outputs.items():
        level = out.get("classification") if isinstance(out, dict) else None
        found[str(name)] = level if isinstance(level, str) else ""
    return found


def _finite_metrics(job_id: str, round_: int, silo: str, metrics_json: str) -> dict[str, float]:
    """A stored metrics record, its finite numbers only (older records may hold others)."""
    try:
        raw = json.loads(metrics_json)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        log.warning(
            "job %s: the metrics of silo '%s' in round %d are unreadable", job_id, silo, round_
        )
        return {}
    kept = {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    if len(kept) < len(raw):
        dropped = ", ".join(sorted(str(k) for k in raw if k not in kept))
        log.warning(
            "job %s: metrics of silo '%s' in round %d that are not finite numbers left out: %s",
            job_id,
            silo,
            round_,
            dropped,
        )
    return kept


def _state(row: JobRow) -> tuple[JobState, str | None]:
    """A stored job's state and error; a state this version does not know reads as failed."""
    try:
        return JobState(row.state), row.error
    except ValueError:
        note = f"the orchestrator's record holds an unknown state '{row.state}'"
        return JobState.FAILED, f"{row.error}; {note}" if row.error else note
