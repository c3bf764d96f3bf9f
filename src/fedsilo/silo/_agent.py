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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from fedsilo._suggest import did_you_mean, listing
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
    JobContext,
    JobTask,
    PrepareTask,
    ReleaseTask,
    SecAggTask,
)
from fedsilo.approval import ApprovalClient, Decision, load_policy
from fedsilo.audit import AuditLog, audit_path
from fedsilo.config import (
    Classification,
    ComputeSpec,
    Kit,
    NodeSpec,
    ResourceGrant,
    Role,
    load_kit,
)
from fedsilo.errors import (
    ClassificationError,
    ConfigError,
    Conflict,
    FedsiloError,
    PolicyRejected,
    SignatureError,
    TaskFailed,
)
from fedsilo.jobs import (
    SiloStep,
    bundle_signature,
    check_signature,
    parse_public_key,
    unpack_bundle,
)
from fedsilo.silo._approved import ApprovedCode, code_files
from fedsilo.silo._capacity import Allocation, ComputePool, Withdrawn
from fedsilo.silo._computes import SiloComputes
from fedsilo.silo._declared import RULE as DECLARED_MODEL
from fedsilo.silo._declared import gate_parameters, read_declared
from fedsilo.silo._errors import SiloErrors
from fedsilo.silo._governance import (
    INPUTS_IN_CATALOG,
    Clearance,
    ResolvedInput,
    approval_request,
    check_leaving,
    check_metrics,
    classify_outputs,
    missing_inputs,
    resolve_inputs,
)
from fedsilo.silo._gpu import gpu_binds
from fedsilo.silo._grant import ResourceRefused
from fedsilo.silo._limits import JobGroup, Limits
from fedsilo.silo._metrics import gate_metrics
from fedsilo.silo._network import JobNetwork
from fedsilo.silo._node import RemoteStep, StartRanks
from fedsilo.silo._protocol import (
    Build,
    Evaluate,
    Fit,
    Init,
    Noop,
    Prepare,
    Preprocess,
)
from fedsilo.silo._sandbox import SandboxSpec, check_sandbox
from fedsilo.silo._secure import SecureParty, masked_words
from fedsilo.silo._session import JobSession, Step
from fedsilo.silo._workerproc import LimitReached, StepLimits, WorkerProcess
from fedsilo.storage import Catalog

__all__ = ["Agent", "run_agent"]

log = logging.getLogger("fedsilo.agent")

POLL_SECONDS = 20.0
HEARTBEAT_SECONDS = 1.0
REPORT_SECONDS = 10.0  # a silo's report rides a heartbeat when it changed, or this often
APPROVAL_POLL_SECONDS = 1.0
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
        self.metric_budget = self.policy.metrics
        self.trusted = {
            name: parse_public_key(line, where=f"{kit.policy_file}: trusted_keys.{name}")
            for name, line in self.policy.trusted_keys.items()
        }
        self.sandboxed = self.spec.sandbox == "bubblewrap"
        self.computes = SiloComputes(self.spec, cores=cores)
        self.audit = AuditLog(audit_path(self.storage), actor=self.silo)
        self.catalog = Catalog(self.storage, silo=self.silo)
        self.client = OrchestratorClient(kit, timeout=POLL_SECONDS + 15)  # the long poll's
        self.work = OrchestratorClient(kit, timeout=60)  # every other call (thread-safe)
        self.approval = ApprovalClient(kit)
        self.secure = SecureParty(self.silo, self.audit, self.storage / "jobs")
        self.approved = ApprovedCode(self.storage)
        self.errors = SiloErrors(
            self.silo,
            self.storage,
            self.audit,
            share=self.spec.share_errors,
            roots=(kit.kit_dir, Path.home()),
        )
        self._sessions: dict[str, JobSession] = {}
        self._lock = threading.Lock()
        self._side = ThreadPoolExecutor(max_workers=SIDE_THREADS, thread_name_prefix="side")
        self.stop = threading.Event()
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
                session = self._sessions[task.job_id] = JobSession(task.job_id)
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
            remote = self._remote_limit(session)
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

    @staticmethod
    def _remote_limit(session: JobSession | None) -> str | None:
        """The limit another machine of the job's step stopped its ranks at, if any."""
        step = session.train if session is not None else None
        return step.remote_limit() if step is not None and step.remotes else None

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
            return self._check(task, task.context)
        if session is None or session.closed.is_set():
            raise FedsiloError(f"the job worker of {task.job_id} is not running in this silo")
        if isinstance(task, PrepareTask):
            session.context = task.context
            return self._prepare(task, session)
        if session.clearance is None and isinstance(task, FitTask | EvaluateTask):
            self._rejoin(task, session)
        if isinstance(task, FitTask):
            return self._fit(task, session)
        if isinstance(task, EvaluateTask):
            return self._evaluate(task, session)
        return self._secure_aggregation(task, session)

    def _rejoin(self, task: FitTask | EvaluateTask, session: JobSession) -> None:
        """Take up a job this agent does not hold (it restarted during the job): fetch its
        context from the orchestrator, check and approve it again, preprocess and start its
        worker, as a preparation would, without sending the initial model. The job's work
        folder is the one the earlier agent used, so a local DP accountant goes on from
        what it had spent. The context must name the bundle the task does."""
        context = self.work.job_context(task.job_id)
        if context.bundle_digest != task.bundle_digest:
            raise self._refuse(
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
        self._prepare(task, session, send_model=False)

    def _release(self, job_id: str, *, graceful: bool = True) -> None:
        """End a job here: kill its workers' trees, give back its compute, forget it."""
        with self._lock:
            session = self._sessions.pop(job_id, None)
        if session is None:
            return
        had_worker = session.train is not None or bool(session.steps)
        if session.close(graceful=graceful) and had_worker:
            self.audit.append("job.ended", job_id=job_id)
        shutil.rmtree(self._job_dir(job_id) / "params", ignore_errors=True)

    def _job_dir(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id

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

    def _refuse(
        self, task: JobTask, rule: str, reason: str, context: JobContext | None = None
    ) -> PolicyRejected:
        """Refuse ``task`` as the silo, in its audit log (naming the job, if known)."""
        if context is None:
            session = self._sessions.get(task.job_id)
            context = session.context if session is not None else None
        self.audit.append(
            "job.refused",
            job_id=task.job_id,
            job_name=context.job_name if context is not None else None,
            author=context.author if context is not None else None,
            rule=rule,
            reason=reason,
        )
        return PolicyRejected(self.silo, rule, reason)

    def _check(self, task: JobTask, context: JobContext) -> TaskResult:
        """Refuse, before anything of the job runs in any silo, what this silo can tell now
        it will not run: an input its catalog lacks, a compute kind it has none of,
        resources its computes cannot grant. Preparation checks them all again."""
        self._inputs(task, context)
        self._grants(task, context, self._computes(task, context))
        return TaskResult(outcome=Outcome.DONE)

    def _inputs(self, task: JobTask, context: JobContext) -> list[ResolvedInput]:
        """The job's inputs in this silo's catalog; a refusal if it lacks one of them."""
        inputs = resolve_inputs(context.inputs, self.catalog, self.silo)
        if not all(i.found for i in inputs):
            reason = missing_inputs(inputs, self.catalog.names())
            raise self._refuse(task, INPUTS_IN_CATALOG, reason, context)
        return inputs

    def _prepare(
        self, task: JobTask, session: JobSession, *, send_model: bool = True
    ) -> TaskResult:
        """Check, approve and preprocess the job of ``session.context``; start its worker."""
        context = session.context
        assert context is not None
        job_id = task.job_id
        self.audit.append(
            "job.offered",
            job_id=job_id,
            job_name=context.job_name,
            author=context.author,
            bundle_digest=context.bundle_digest,
        )
        job_dir = self._job_dir(job_id)
        bundle = self.work.download_bundle(job_id)
        if hashlib.sha256(bundle).hexdigest() != context.bundle_digest:
            raise self._refuse(
                task, "bundle-digest", "the bundle received differs from the one the job names"
            )
        code_dir = job_dir / "code"
        try:
            manifest = unpack_bundle(bundle, code_dir)
            declared = read_declared(code_dir)
        except SignatureError as exc:
            raise self._refuse(task, "bundle-manifest", str(exc)) from exc
        name = context.job_name
        files, unlisted = code_files(code_dir, manifest)
        signature = check_signature(manifest.digest, bundle_signature(code_dir), self.trusted)
        inputs = self._inputs(task, context)
        outputs, declassifications = classify_outputs(context.outputs, inputs)
        computes = self._computes(task, context)
        grants = self._grants(task, context, computes)
        request = approval_request(
            job_id,
            context,
            silo=self.silo,
            compute=computes[SiloStep.TRAIN].name,
            computes={step.value: c.name for step, c in computes.items()},
            resources={step.value: g for step, g in grants.items()},
            manifest_digest=manifest.digest,
            signature=signature,
            inputs=inputs,
            outputs=outputs,
            declassifications=declassifications,
            model=declared,
            metric_names=context.metrics or (),
            files=files,
            files_not_listed=unlisted,
            code_change=self.approved.review(name, code_dir, manifest),
        )
        self.audit.append(
            "approval.asked",
            job_id=job_id,
            signing=signature.status.value,
            signing_key=signature.key_name or signature.key_id,
            inputs=[f"{i.storage}:{i.dataset}" for i in inputs],
            outputs={k: v.value for k, v in outputs.items()},
            resources={step.value: g.describe() for step, g in grants.items()},
        )
        answer = self.approval.ask(request)
        while answer.decision is Decision.MANUAL:
            detail = f"waiting for approval in silo '{self.silo}' (request {answer.request_id})"
            if session.closed.is_set() or not self.work.progress(task.task_id, detail):
                raise self._refuse(
                    task,
                    answer.rule,
                    "the job was withdrawn while it waited for a person's approval",
                )
            self.stop.wait(APPROVAL_POLL_SECONDS)
            answer = self.approval.state(answer.request_id)
        self.audit.append(
            "approval.answered",
            job_id=job_id,
            decision=answer.decision.value,
            rule=answer.rule,
            reason=answer.reason,
            decided_by=answer.decided_by,
        )
        if answer.decision is not Decision.APPROVE:
            raise self._refuse(task, answer.rule, answer.reason)
        self.approved.keep(name, job_id, code_dir, manifest)
        if declared is None:
            raise self._refuse(
                task,
                DECLARED_MODEL,
                "the job's bundle declares no model (MODEL.json), so no parameters could "
                "leave; submit it with `fedsilo submit` or OrchestratorClient.submit, which "
                "declare it",
            )
        foreign = [i for i in inputs if i.path is None]
        if foreign:
            raise self._refuse(
                task,
                "inputs-in-this-silo",
                f"input '{foreign[0].role}' lives "
                f"in the storage of '{foreign[0].storage}'; a job in silo "
                f"'{self.silo}' reads only this silo's storage",
            )
        session.clearance = Clearance(
            job_id,
            answer.request_id,
            answer.rule,
            answer.decided_by,
            outputs,
            privacy=context.privacy,
            rounds=context.rounds,
            model=declared,
        )
        session.metric_names = context.metrics
        return self._start_worker(
            task, session, code_dir, inputs, computes, grants, send_model=send_model
        )

    def _computes(self, task: JobTask, context: JobContext) -> dict[SiloStep, ComputeSpec]:
        """The compute of this silo each step of the job runs on, picked by kind."""
        chosen = {}
        for step in SiloStep:
            kind = context.computes.get(step.value)
            compute = self.spec.compute_of_kind(kind)
            if compute is None:
                kinds = [c.kind for c in self.spec.all_computes()]
                raise self._refuse(
                    task,
                    "compute",
                    f"the job runs its {step.value} step on a compute of kind '{kind}'"
                    f"{did_you_mean(str(kind), kinds)}; silo '{self.silo}' has none (its "
                    f"computes are of kind: {listing(kinds)})",
                    context,
                )
            chosen[step] = compute
        return chosen

    def _grants(
        self, task: JobTask, context: JobContext, computes: dict[SiloStep, ComputeSpec]
    ) -> dict[SiloStep, ResourceGrant]:
        """What this silo grants each step; a request it cannot meet is refused now."""
        from fedsilo.config import ResourceRequest

        grants = {}
        # the train step first: a request for every step is refused by its main step
        for step, compute in sorted(computes.items(), key=lambda sc: sc[0] != SiloStep.TRAIN):
            request = context.resources.get(step.value) or ResourceRequest()
            try:
                grants[step] = self.computes.grant(compute, request, step.value)
            except ResourceRefused as exc:
                raise self._refuse(
                    task, "resources", f"{exc.message} (job spec field '{exc.field}')", context
                ) from exc
        return grants

    def _start_worker(
        self,
        task: JobTask,
        session: JobSession,
        code_dir: Path,
        inputs: list[ResolvedInput],
        computes: dict[SiloStep, ComputeSpec],
        grants: dict[SiloStep, ResourceGrant],
        *,
        send_model: bool = True,
    ) -> TaskResult:
        context = session.context
        assert context is not None
        job_dir = self._job_dir(task.job_id)
        work, params = job_dir / "work", job_dir / "params"
        work.mkdir(parents=True, exist_ok=True)
        params.mkdir(parents=True, exist_ok=True)
        resolved = [(i, i.path) for i in inputs if i.path is not None]
        sandbox = None
        if self.sandboxed:
            check_sandbox()
            sandbox = SandboxSpec(
                code_dir=code_dir, inputs=tuple(p for _, p in resolved), writable=(work, params)
            )
        else:
            log.warning(
                "job %s runs WITHOUT a sandbox in silo '%s' (sandbox: none)", task.job_id, self.silo
            )
            self.audit.append("sandbox.disabled", job_id=task.job_id)
        session.end_train()
        for i, _ in resolved:
            self.audit.append(
                "dataset.read",
                job_id=task.job_id,
                dataset=i.dataset,
                classification=(i.classification or Classification.SENSITIVE).value,
                sha256=i.sha256,
            )
        init = {
            "code_dir": str(code_dir),
            "entrypoint": context.entrypoint,
            "silo": self.silo,
            "inputs": {i.role: str(path) for i, path in resolved},
            "work_dir": str(work),
            "hyperparameters": context.hyperparameters,
            "rounds": context.rounds,
            "privacy": context.privacy.model_dump(mode="json"),
        }
        started = time.perf_counter()
        out = params / "initial.safetensors"
        first, train = computes[SiloStep.PREPROCESS], computes[SiloStep.TRAIN]
        if first.name != train.name:  # the silo subgraph spans two of the silo's computes
            pre = self._spawn(task, session, SiloStep.PREPROCESS, first, grants, sandbox, init)
            try:
                pre.worker.request(Preprocess())
            finally:
                session.end_step(pre)
        step = self._spawn(task, session, SiloStep.TRAIN, train, grants, sandbox, init)
        step.worker.request(
            Prepare(out=str(out)) if first.name == train.name else Build(out=str(out))
        )
        compute = time.perf_counter() - started
        if context.privacy.secure_aggregation is not None:
            session.mask_words = (masked_words(out), 64)
        if not send_model:
            out.unlink(missing_ok=True)
            return TaskResult(outcome=Outcome.DONE, compute_seconds=compute)
        return TaskResult(
            outcome=Outcome.DONE,
            params_digest=self._upload(task, session, out, "model"),
            compute_seconds=compute,
        )

    def _spawn(
        self,
        task: JobTask,
        session: JobSession,
        step: SiloStep,
        compute: ComputeSpec,
        grants: dict[SiloStep, ResourceGrant],
        sandbox: SandboxSpec | None,
        init: dict[str, Any],
    ) -> Step:
        """A job worker for ``step`` on ``compute``, once the compute has room for it.

        It runs in a control group of its own with the grant's limits, sees only the GPUs
        it was given, and is initialised with the job's code and inputs. A step over
        several machines also gets the same on each other machine, through its node
        service, and a network namespace on each that reaches the others only.
        """
        assert task.job_id is not None
        job_id = task.job_id
        granted = grants[step]
        holder = job_id if step is SiloStep.TRAIN else f"{job_id}:{step.value}"

        def waiting(why: str) -> bool:
            detail = f"queued in silo '{self.silo}' for compute '{compute.name}': {why}"
            return not session.closed.is_set() and self.work.progress(
                task.task_id, self.errors.scrub(detail)
            )

        machines: list[tuple[NodeSpec | None, ComputePool]] = (
            list(self.computes.machines(compute.name)[: granted.nodes])
            if granted.nodes > 1
            else [(None, self.computes.pool(compute.name))]
        )
        parts = _Parts()
        try:
            allocations = []
            for _, pool in machines:
                allocations.append(pool.acquire(holder, granted, waiting=waiting))
                parts.holds.append((pool, holder))
            parts.group = self.computes.limiter.group(
                f"{job_id}.{step.value}",
                Limits(
                    memory_bytes=granted.memory,
                    processes=granted.processes,
                    cpu_cores=granted.cpu,
                    file_bytes=granted.disk,
                ),
            )
            environment = {
                **compute.environment,
                "OMP_NUM_THREADS": str(granted.threads),
                "MKL_NUM_THREADS": str(granted.threads),
            }
            devices = allocations[0].devices
            job_sandbox = sandbox
            if devices:
                environment["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
                if sandbox is not None:
                    binds = gpu_binds(devices)
                    job_sandbox = dataclasses.replace(
                        sandbox,
                        devices=binds.devices,
                        system=binds.read_only,
                        library_path=binds.library_dirs,
                    )
            spread = None
            if granted.nodes > 1:
                spread = self._spread(task, parts, machines, allocations, granted, sandbox, init)
                if job_sandbox is not None:
                    job_sandbox = dataclasses.replace(job_sandbox, share_net=True)
            work = Path(init["work_dir"])
            worker = WorkerProcess(
                silo=self.silo,
                cwd=work,
                log_file=self._job_dir(job_id) / "worker.log",
                sandbox=job_sandbox,
                environment=environment,
                group=parts.group,
                limits=StepLimits(
                    max_step_seconds=granted.max_step_seconds,
                    disk=granted.disk,
                    work_dir=work,
                    memory=granted.memory,
                    processes=granted.processes,
                ),
                prefix=parts.network.prefix() if parts.network is not None else (),
            )
        except Withdrawn:
            parts.undo()
            raise FedsiloError(
                f"job {job_id} was withdrawn while it waited for compute '{compute.name}'"
            ) from None
        except BaseException:
            parts.undo()
            raise
        held = Step(worker, parts.holds, parts.group, parts.network, parts.remotes)
        if not session.attach(held, train=step is SiloStep.TRAIN):
            raise FedsiloError(f"job {job_id} was released while its worker started")
        self.audit.append(
            "job.started",
            job_id=job_id,
            sandbox=self.spec.sandbox,
            compute=compute.name,
            step=step.value,
            worker_pid=worker.pid,
            enforcement=self.computes.limiter.enforcement.value,
            resources=granted.describe(),
            gpus=list(devices),
            nodes=[node.name for node, _ in machines if node is not None],
        )
        worker.request(
            Init(
                **init,
                threads=granted.threads,
                device="cuda" if devices else "cpu",
                workers=granted.workers,
                machines=spread,
            )
        )
        return held

    def _spread(
        self,
        task: JobTask,
        parts: _Parts,
        machines: list[tuple[NodeSpec | None, ComputePool]],
        allocations: list[Allocation],
        granted: ResourceGrant,
        sandbox: SandboxSpec | None,
        init: dict[str, Any],
    ) -> dict[str, Any]:
        """Network namespaces for a step over several machines, and its ranks on the others.

        Returns what this machine's launcher needs to join them (it is node rank 0).
        """
        addresses = [a.address for a in allocations]
        if any(a is None for a in addresses):
            raise FedsiloError("a machine of the compute gave the step no job address")
        head = machines[0][0]
        assert head is not None and task.job_id is not None
        step_id = f"{task.job_id}.train"
        parts.network = JobNetwork.for_step(
            f"{step_id}@{head.name}",
            parent=head.interface,
            address=str(addresses[0]),
            peers=tuple(str(a) for a in addresses[1:]),
        )
        parts.network.create()
        paths = sandbox or SandboxSpec(
            code_dir=Path(init["code_dir"]),
            inputs=tuple(Path(p) for p in init["inputs"].values()),
            writable=(Path(init["work_dir"]), self._job_dir(task.job_id) / "params"),
        )
        for rank, ((node, _), allocation) in enumerate(zip(machines, allocations, strict=True)):
            if rank == 0 or node is None:
                continue
            request = StartRanks(
                step=step_id,
                node_rank=rank,
                nnodes=len(machines),
                workers=granted.workers,
                threads=granted.threads,
                master=str(addresses[0]),
                address=str(allocation.address),
                peers=tuple(str(a) for j, a in enumerate(addresses) if j != rank),
                code_dir=str(paths.code_dir),
                inputs=tuple(str(p) for p in paths.inputs),
                writable=tuple(str(p) for p in paths.writable),
                environment=dict(self.computes.offers[granted.compute].spec.environment),
                memory=granted.memory,
                processes=granted.processes,
                cpu=granted.cpu,
                disk=granted.disk,
                sandbox=self.sandboxed,
                gpus=allocation.devices,
            )
            parts.remotes.append(RemoteStep(self.kit, node, request))
        return {
            "count": len(machines),
            "rank": 0,
            "master": str(addresses[0]),
            "address": str(addresses[0]),
        }

    def _upload(
        self,
        task: JobTask,
        session: JobSession,
        path: Path,
        output: str,
        *,
        data: Sequence[bytes | memoryview] | None = None,
        **audit: Any,
    ) -> str:
        """Upload an output file if its classification lets it leave; else keep it here.

        ``data``, if given, is what leaves in the file's stead (the masked form of the
        update under secure aggregation); a refused output keeps ``path`` in the silo.
        """
        assert task.job_id is not None and session.clearance is not None
        classification = session.clearance.outputs[output]
        try:
            check_leaving(self.silo, output, classification)
        except ClassificationError:
            kept = f"{task.job_id}.{output}.round-{task.round}"
            self.catalog.add(kept, path, Classification.SENSITIVE, replace=True)
            self.audit.append(
                "output.kept",
                job_id=task.job_id,
                output=output,
                round=task.round,
                dataset=kept,
                classification=classification.value,
            )
            raise
        if output == "model":
            gate_parameters(self.audit, self.silo, task, session.clearance.model, path)
        digest = self.work.upload_params(path) if data is None else self.work.upload_bytes(data)
        size = path.stat().st_size if data is None else sum(len(part) for part in data)
        self.audit.append(
            "output.uploaded",
            job_id=task.job_id,
            output=output,
            round=task.round,
            sha256=digest,
            size=size,
            classification=classification.value,
            **audit,
        )
        return digest

    def _metrics(
        self, task: JobTask, session: JobSession, metrics: dict[str, float] | None
    ) -> dict[str, float] | None:
        """Let metrics leave only under their clearance, as a bounded set of numbers."""
        if metrics is None:
            return None
        assert session.clearance is not None
        try:
            check_leaving(self.silo, "metrics", session.clearance.outputs["metrics"])
            gated = gate_metrics(
                check_metrics(self.silo, metrics), session.metric_names, self.metric_budget
            )
        except ClassificationError as exc:
            self.audit.append(
                "output.kept",
                job_id=task.job_id,
                output="metrics",
                round=task.round,
                reason=str(exc),
            )
            raise
        if gated.withheld or gated.over_budget:  # their names stay here, in the silo's log
            self.audit.append(
                "metrics.withheld",
                job_id=task.job_id,
                round=task.round,
                undeclared=list(gated.withheld),
                over_budget=list(gated.over_budget),
            )
        self.audit.append(
            "metrics.sent",
            job_id=task.job_id,
            round=task.round,
            names=sorted(gated.sent),
            size=8 * len(gated.sent),
            digits=self.metric_budget.digits,
        )
        return gated.sent

    def _worker(self, session: JobSession) -> WorkerProcess:
        step = session.train
        if step is None or not step.worker.alive() or session.clearance is None:
            raise FedsiloError(f"the job worker of {session.job_id} is not running in this silo")
        return step.worker

    def _global(self, task: FitTask | EvaluateTask) -> Path:
        path = self._job_dir(task.job_id) / "params" / f"global-{task.params_digest}.safetensors"
        if not path.exists():
            self.work.download_params(task.job_id, task.params_digest, path)
        return path

    def _fit(self, task: FitTask, session: JobSession) -> TaskResult:
        clearance = session.clearance
        secure = clearance is not None and clearance.privacy.secure_aggregation is not None
        if secure:
            self.secure.party(session, task.round)  # no training, nor update, without masks
        worker = self._worker(session)
        params = self._global(task)
        out = self._job_dir(task.job_id) / "params" / f"update-{task.round}.safetensors"
        started = time.perf_counter()
        reply = worker.request(
            Fit(
                round=task.round,
                params=str(params),
                out=str(out),
                evaluate_first=task.evaluate_first,
                config=task.config,
            )
        )
        compute = time.perf_counter() - started
        trained = reply.train_metrics
        if trained is None:
            raise FedsiloError("the job worker's fit reported no training metrics")
        train = self._metrics(task, session, trained)
        evaluation = self._metrics(task, session, reply.eval_metrics)
        samples = _samples(trained)
        if secure:
            masked = self.secure.mask(session, task, out, params, float(samples))
            digest = self._upload(task, session, out, "model", data=masked, masked=True)
            out.unlink(missing_ok=True)  # the plain update never leaves, nor stays around
        else:
            digest = self._upload(task, session, out, "model")
        params.unlink(missing_ok=True)
        return TaskResult(
            outcome=Outcome.DONE,
            params_digest=digest,
            num_samples=samples,
            train_metrics=train,
            eval_metrics=evaluation,
            compute_seconds=compute,
        )

    def _secure_aggregation(self, task: SecAggTask, session: JobSession) -> TaskResult:
        """One secure-aggregation message for the job's party; a protocol error is refused."""
        from fedsilo.privacy.secagg import SecAggProtocolError

        try:
            return self.secure.handle(session, task)
        except SecAggProtocolError as exc:
            raise self._refuse(task, "secure-aggregation", str(exc)) from exc

    def _evaluate(self, task: EvaluateTask, session: JobSession) -> TaskResult:
        worker = self._worker(session)
        params = self._global(task)
        started = time.perf_counter()
        reply = worker.request(Evaluate(round=task.round, params=str(params)))
        compute = time.perf_counter() - started
        return TaskResult(
            outcome=Outcome.DONE,
            eval_metrics=self._metrics(task, session, reply.eval_metrics),
            compute_seconds=compute,
        )


def _job_name(session: JobSession | None) -> str | None:
    context = session.context if session is not None else None
    return context.job_name if context is not None else None


def _samples(metrics: dict[str, float]) -> int:
    """What a fit trained on, as its task reported it (``num_samples``, a whole number)."""
    return max(0, int(metrics.get("num_samples", 0)))


@dataclasses.dataclass
class _Parts:
    """What a step holds while its worker starts; given back if it does not start."""

    holds: list[tuple[ComputePool, str]] = dataclasses.field(default_factory=list)
    group: JobGroup | None = None
    network: JobNetwork | None = None
    remotes: list[RemoteStep] = dataclasses.field(default_factory=list)

    def undo(self) -> None:
        for remote in self.remotes:
            remote.close()
        if self.group is not None:
            self.group.close()
        if self.network is not None:
            self.network.close()
        for pool, holder in self.holds:
            pool.release(holder)


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
