"""The silo agent: connects out to the orchestrator, pulls tasks, runs them in job workers.

A silo opens no port. For each job the agent verifies the bundle against its manifest and
the signature against the keys its policy trusts, resolves the inputs in its own catalog
only, computes what its compute grants the job, asks its approval endpoint, runs the task
code in a sandboxed worker process (never in the agent) under the compute's limits, and
uploads only what may leave: model parameters and metrics that are not ``sensitive``.
Every step and every refusal goes to the silo's audit log.

Each job's tasks run on a lane of their own (:class:`~fedsilo.silo._session.JobSession`):
the loop that pulls tasks never waits on task code, so a release stops a job's workers at
once, ``fedsilo check`` answers while jobs train, and jobs run side by side within their
computes' capacity.

This module is the task loop: it polls, routes each task to its job's lane, heartbeats,
sends results, and releases or takes up jobs again. A job's check and preparation are
:mod:`fedsilo.silo._preparation` (its workers started by :mod:`fedsilo.silo._launch`),
its fit and evaluate tasks and the outputs they let leave :mod:`fedsilo.silo._steps`, its
secure-aggregation party :mod:`fedsilo.silo._secure`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

from fedsilo.api import (
    MalformedTask,
    OrchestratorClient,
    Outcome,
    PingTask,
    SiloReport,
    TaskKind,
    TaskResult,
)
from fedsilo.api._messages import (
    CheckTask,
    EvaluateTask,
    FitTask,
    JobTask,
    PrepareTask,
    ReleaseTask,
    SecAggTask,
)
from fedsilo.approval import ApprovalClient, load_policy
from fedsilo.audit import AuditLog, audit_path
from fedsilo.config import Kit, Role, load_kit
from fedsilo.errors import (
    ClassificationError,
    ConfigError,
    Conflict,
    FedsiloError,
    PolicyRejected,
    SignatureError,
    TaskFailed,
)
from fedsilo.jobs import parse_public_key
from fedsilo.silo._approved import ApprovedCode
from fedsilo.silo._computes import SiloComputes
from fedsilo.silo._errors import SiloErrors
from fedsilo.silo._launch import Launcher
from fedsilo.silo._preparation import Preparation
from fedsilo.silo._protocol import Noop
from fedsilo.silo._sandbox import SandboxSpec, check_sandbox
from fedsilo.silo._secure import SecureParty
from fedsilo.silo._session import JobSession
from fedsilo.silo._steps import Steps
from fedsilo.silo._workerproc import LimitReached, StepLimits, WorkerProcess
from fedsilo.storage import Catalog

__all__ = ["Agent", "run_agent"]

log = logging.getLogger("fedsilo.agent")

POLL_SECONDS = 20.0
HEARTBEAT_SECONDS = 1.0
REPORT_SECONDS = 10.0  # a silo's report rides a heartbeat when it changed, or this often
WORKER_IDLE_SECONDS = 900.0  # a job worker no task has used for this long is stopped
SIDE_THREADS = 8  # checks, releases and tasks of unknown jobs, handled beside the lanes


class Agent:
    """One silo's agent. ``run`` loops until ``stop`` is set.

    ``cores`` is the silo's share of this machine's cores when several silos share it
    (``fedsilo up``); a compute that declares no ``threads`` owns that many.
    """

    def __init__(self, kit: Kit, *, cores: int | None = None) -> None:
        if kit.role is not Role.SILO or kit.silo is None:
            raise ConfigError(
                f"kit '{kit.name}' belongs to a {kit.role}, not a silo", file=str(kit.kit_dir)
            )
        self.kit = kit
        self.silo = kit.name
        self.spec = kit.silo
        self.storage = kit.storage_path
        self.policy = load_policy(kit.policy_file)
        trusted = {
            name: parse_public_key(line, where=f"{kit.policy_file}: trusted_keys.{name}")
            for name, line in self.policy.trusted_keys.items()
        }
        self.sandboxed = self.spec.sandbox == "bubblewrap"
        self.computes = SiloComputes(self.spec, cores=cores)
        self.audit = AuditLog(audit_path(self.storage), actor=self.silo)
        self.catalog = Catalog(self.storage, silo=self.silo)
        self.client = OrchestratorClient(kit, timeout=POLL_SECONDS + 15)  # the long poll's
        self.work = OrchestratorClient(kit, timeout=60)  # every other call (thread-safe)
        self.secure = SecureParty(self.silo, self.audit)
        self.errors = SiloErrors(
            self.silo,
            self.storage,
            self.audit,
            share=self.spec.share_errors,
            roots=(kit.kit_dir, Path.home()),
        )
        self.stop = threading.Event()
        self.steps = Steps(
            silo=self.silo,
            audit=self.audit,
            catalog=self.catalog,
            work=self.work,
            budget=self.policy.metrics,
            secure=self.secure,
        )
        self.preparation = Preparation(
            silo=self.silo,
            spec=self.spec,
            trusted=trusted,
            audit=self.audit,
            catalog=self.catalog,
            work=self.work,
            approval=ApprovalClient(kit),
            approved=ApprovedCode(self.storage),
            computes=self.computes,
            launcher=Launcher(
                kit,
                computes=self.computes,
                audit=self.audit,
                work=self.work,
                errors=self.errors,
                sandboxed=self.sandboxed,
            ),
            steps=self.steps,
            stop=self.stop,
        )
        self._sessions: dict[str, JobSession] = {}
        self._lock = threading.Lock()
        self._side = ThreadPoolExecutor(max_workers=SIDE_THREADS, thread_name_prefix="side")
        # this process, as the orchestrator tells it from an earlier one of the same silo
        self.instance = uuid.uuid4().hex

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> None:
        if not self.sandboxed:
            log.warning("silo '%s' runs job code WITHOUT a sandbox (sandbox: none)", self.silo)
        limiter = self.computes.limiter
        self.audit.append(
            "agent.started",
            sandbox=self.spec.sandbox,
            enforcement=limiter.enforcement.value,
            enforcement_note=limiter.reason,
            orchestrator=self.kit.orchestrator_url,
        )
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        backoff = 0.5
        announced = False
        try:
            while not self.stop.is_set():
                try:
                    task = self.client.next_task(POLL_SECONDS, instance=self.instance)
                except MalformedTask as exc:
                    self._refuse_malformed(exc)
                    continue
                except FedsiloError as exc:
                    if announced or backoff == 0.5:
                        log.warning("cannot get a task from the orchestrator: %s", exc)
                    announced = False
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if not announced:
                    log.info("silo '%s' connected to %s", self.silo, self.client.url)
                    announced = True
                backoff = 0.5
                if task is not None:
                    self._route(task)
                self._stop_idle_workers()
        finally:
            self.close()

    def _route(self, task: PingTask | JobTask) -> None:
        """Hand ``task`` to its job's lane; checks and releases run beside the lanes."""
        if isinstance(task, PingTask | ReleaseTask):
            self._side.submit(self._handle, task, None)
            return
        with self._lock:
            session = self._sessions.get(task.job_id)
            if session is None and isinstance(task, PrepareTask | FitTask | EvaluateTask):
                session = JobSession(task.job_id, self.storage / "jobs" / task.job_id)
                self._sessions[task.job_id] = session
        if session is None:  # a job this agent cannot take up again: fails by name
            self._side.submit(self._handle, task, None)
            return
        session.last_used = time.monotonic()
        try:
            session.lane.submit(self._handle, task, session)
        except RuntimeError:  # the job was released meanwhile
            self._side.submit(self._handle, task, None)

    def _refuse_malformed(self, exc: MalformedTask) -> None:
        """Refuse a task this silo will not parse, and say so to the orchestrator."""
        log.warning("%s", exc)
        self.audit.append("task.refused", task_id=exc.task_id, reason=str(exc))
        if exc.task_id is not None:
            reason = self.errors.scrub(f"silo '{self.silo}' refused the task: {exc}")
            with contextlib.suppress(FedsiloError):
                self.work.send_result(
                    exc.task_id, TaskResult(outcome=Outcome.REFUSED, error=reason)
                )

    def _stop_idle_workers(self) -> None:
        """Stop workers of jobs that ended without a release (e.g. the orchestrator restarted)."""
        now = time.monotonic()
        with self._lock:
            idle = [
                job_id
                for job_id, s in self._sessions.items()
                if s.running == 0 and now - s.last_used > WORKER_IDLE_SECONDS
            ]
        for job_id in idle:
            log.info("stopping the idle worker of job %s", job_id)
            self._side.submit(self._release, job_id)

    def close(self) -> None:
        """Stop every job worker and the connections."""
        with self._lock:
            jobs = list(self._sessions)
        for job_id in jobs:
            self._release(job_id, graceful=False)
        self._side.shutdown(wait=False, cancel_futures=True)
        self.secure.close()
        self.computes.close()
        self.client.close()
        self.work.close()
        self.catalog.close()

    @property
    def busy(self) -> bool:
        with self._lock:
            return any(s.running for s in self._sessions.values())

    def report(self) -> SiloReport:
        """What this silo tells the orchestrator of its computes, limits and queue, and
        whether it shares its errors (a note on its limits never names a host path)."""
        report = self.computes.report(self.spec.sandbox)
        note = report.enforcement_note
        return report.model_copy(
            update={
                "enforcement_note": None if note is None else self.errors.scrub(note),
                "share_errors": self.spec.share_errors,
            }
        )

    def _heartbeat(self) -> None:
        client = OrchestratorClient(self.kit, timeout=10)
        sent: SiloReport | None = None
        sent_at = 0.0
        try:
            while not self.stop.wait(HEARTBEAT_SECONDS):
                report: SiloReport | None = self.report()
                now = time.monotonic()
                if report == sent and now - sent_at < REPORT_SECONDS:
                    report = None
                with contextlib.suppress(FedsiloError):
                    client.heartbeat(
                        busy=self.busy,
                        sandbox=self.spec.sandbox,
                        report=report,
                        instance=self.instance,
                    )
                    if report is not None:
                        sent, sent_at = report, now
        finally:
            client.close()

    def _handle(self, task: PingTask | JobTask, session: JobSession | None) -> None:
        started = time.monotonic()
        if session is not None:
            session.running += 1
        log.info(
            "task %s: %s job=%s round=%d",
            task.task_id[:8],
            task.kind.value,
            task.job_id,
            task.round,
        )
        try:
            result = self._dispatch(task, session)
        except LimitReached as exc:
            result = self._stopped(task, session, exc)
        except TaskFailed as exc:
            remote = session.remote_limit() if session is not None else None
            if remote is not None:  # another machine stopped its ranks at a limit
                result = self._stopped(task, session, LimitReached(self.silo, remote))
            else:  # the worker's words stay here; fedsilo's leave (fedsilo.silo._errors)
                result = self.errors.failed(task, exc, _job_name(session))
        except (PolicyRejected, ClassificationError, SignatureError) as exc:
            log.warning("task %s refused: %s", task.task_id[:8], exc)
            result = TaskResult(outcome=Outcome.REFUSED, error=self.errors.scrub(str(exc)))
        except FedsiloError as exc:
            result = self.errors.failed(task, exc, _job_name(session))
        except Exception as exc:
            log.exception("task %s failed inside the agent", task.task_id[:8])
            result = self.errors.failed(task, exc, _job_name(session))
        finally:
            if session is not None:
                session.running -= 1
                session.last_used = time.monotonic()
        if (
            not result.ok
            and task.job_id is not None
            and result.limit is None
            and not result.error_id
        ):
            self.audit.append(
                "task.failed",
                job_id=task.job_id,
                kind=task.kind.value,
                round=task.round,
                error=result.error,
            )
        result = result.model_copy(update={"seconds": time.monotonic() - started})
        try:
            self._send_result(task, result)
        finally:
            if session is not None:
                self.secure.start_masks_ahead(session)

    def _stopped(
        self, task: PingTask | JobTask, session: JobSession | None, exc: LimitReached
    ) -> TaskResult:
        """A step hit a limit: its tree is dead; free the job's compute, say where it was."""
        if session is not None:
            session.end_train()
        where = {
            TaskKind.PREPARE: "preprocessing",
            TaskKind.FIT: f"round {task.round}",
            TaskKind.EVALUATE: "the final evaluation",
        }.get(task.kind, task.kind.value)
        sentence = f"silo '{self.silo}' stopped the job: {exc.limit} reached in {where}"
        log.warning("job %s: %s", task.job_id, sentence)
        self.audit.append(
            "job.stopped", job_id=task.job_id, limit=exc.limit, step=where, round=task.round
        )
        return TaskResult(outcome=Outcome.STOPPED, error=sentence, limit=exc.limit)

    def _send_result(self, task: PingTask | JobTask, result: TaskResult) -> None:
        result = self.errors.outgoing(result)
        for attempt in range(5):
            try:
                self.work.send_result(task.task_id, result)
                return
            except Conflict as exc:
                log.warning("the orchestrator did not take task %s: %s", task.task_id[:8], exc)
                return
            except FedsiloError as exc:
                log.warning(
                    "could not report task %s (attempt %d): %s", task.task_id[:8], attempt + 1, exc
                )
                if self.stop.wait(0.5 * (attempt + 1)):
                    return

    # -- tasks ------------------------------------------------------------------------------

    def _dispatch(self, task: PingTask | JobTask, session: JobSession | None) -> TaskResult:
        if isinstance(task, PingTask):
            return self._ping()
        if isinstance(task, ReleaseTask):
            self._release(task.job_id)
            return TaskResult(outcome=Outcome.DONE)
        if isinstance(task, CheckTask):
            return self.preparation.check(task, task.context)
        if session is None or session.closed.is_set():
            raise FedsiloError(f"the job worker of {task.job_id} is not running in this silo")
        if isinstance(task, PrepareTask):
            session.context = task.context
            return self.preparation.prepare(task, session)
        if session.clearance is None and isinstance(task, FitTask | EvaluateTask):
            self._rejoin(task, session)
        if isinstance(task, FitTask):
            return self.steps.fit(task, session)
        if isinstance(task, EvaluateTask):
            return self.steps.evaluate(task, session)
        return self._secure_aggregation(task, session)

    def _rejoin(self, task: FitTask | EvaluateTask, session: JobSession) -> None:
        """Take up a job this agent does not hold (it restarted during the job): fetch its
        context from the orchestrator, check and approve it again, preprocess and start its
        worker, as a preparation would, without sending the initial model. The job's work
        folder is the one the earlier agent used, so a local DP accountant goes on from
        what it had spent. The context must name the bundle the task does."""
        context = self.work.job_context(task.job_id)
        if context.bundle_digest != task.bundle_digest:
            raise self.preparation.refuse(
                task,
                "bundle-digest",
                f"the job's context names bundle {context.bundle_digest[:12]}, its task "
                f"bundle {task.bundle_digest[:12]}",
                context,
            )
        if context.privacy.secure_aggregation is not None:
            raise FedsiloError(
                f"secure aggregation of job {task.job_id} is not set up in silo "
                f"'{self.silo}' (its agent restarted and lost its masks); the silo sends no "
                "update in the clear"
            )
        log.info("silo '%s' takes job %s up again at round %d", self.silo, task.job_id, task.round)
        self.audit.append("job.rejoined", job_id=task.job_id, round=task.round)
        session.context = context
        self.preparation.prepare(task, session, send_model=False)

    def _release(self, job_id: str, *, graceful: bool = True) -> None:
        """End a job here: kill its workers' trees, give back its compute, forget it."""
        with self._lock:
            session = self._sessions.pop(job_id, None)
        if session is None:
            return
        if session.close(graceful=graceful):
            self.audit.append("job.ended", job_id=job_id)

    def _ping(self) -> TaskResult:
        folder = self.storage / "check"
        sandbox = None
        if self.sandboxed:
            check_sandbox()
            sandbox = SandboxSpec(code_dir=folder, inputs=(), writable=(folder,))
        folder.mkdir(parents=True, exist_ok=True)
        worker = WorkerProcess(
            silo=self.silo,
            cwd=folder,
            log_file=folder / "worker.log",
            sandbox=sandbox,
            limits=StepLimits(max_step_seconds=60),
        )
        try:
            worker.request(Noop())
        finally:
            worker.stop()
        return TaskResult(outcome=Outcome.DONE)

    def _secure_aggregation(self, task: SecAggTask, session: JobSession) -> TaskResult:
        """One secure-aggregation message for the job's party; a protocol error is refused."""
        from fedsilo.privacy.secagg import SecAggProtocolError

        try:
            return self.secure.handle(session, task)
        except SecAggProtocolError as exc:
            raise self.preparation.refuse(
                task, "secure-aggregation", str(exc), session.context
            ) from exc


def _job_name(session: JobSession | None) -> str | None:
    context = session.context if session is not None else None
    return context.job_name if context is not None else None


def run_agent(kit_dir: Path, *, cores: int | None = None) -> None:
    """Run the agent of the silo kit in ``kit_dir`` until SIGTERM or SIGINT."""
    kit = load_kit(kit_dir)
    agent = Agent(kit, cores=cores)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("agent of silo '%s' starting; orchestrator %s", kit.name, kit.orchestrator_url)
    agent.run()
