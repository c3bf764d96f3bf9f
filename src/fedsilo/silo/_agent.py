"""The silo agent: connects out to the orchestrator, pulls tasks, runs them in job workers.

A silo opens no port. For each job the agent verifies the bundle against its manifest and
the signature against the keys its policy trusts, resolves the inputs in its own catalog
only, asks its approval endpoint, runs the task code in a sandboxed worker process (never
in the agent), and uploads only what may leave: model parameters and metrics that are not
``sensitive``. Every step and every refusal goes to the silo's audit log.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from fedsilo.api import MalformedTask, OrchestratorClient, TaskKind, TaskMessage, TaskResult
from fedsilo.approval import ApprovalClient, Decision, load_policy
from fedsilo.audit import AuditLog, audit_path
from fedsilo.config import Classification, ComputeSpec, Kit, Role, load_kit
from fedsilo.errors import (
    ClassificationError,
    ConfigError,
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
from fedsilo.silo._governance import (
    Clearance,
    ResolvedInput,
    approval_request,
    check_leaving,
    check_metrics,
    classify_outputs,
    resolve_inputs,
)
from fedsilo.silo._sandbox import SandboxSpec, check_sandbox
from fedsilo.silo._worker import NICENESS
from fedsilo.silo._workerproc import WorkerProcess
from fedsilo.storage import Catalog

if TYPE_CHECKING:
    from fedsilo.privacy.secagg import RoundMask, SecAggClient

__all__ = ["Agent", "run_agent"]

log = logging.getLogger("fedsilo.agent")

POLL_SECONDS = 20.0
HEARTBEAT_SECONDS = 1.0
APPROVAL_POLL_SECONDS = 1.0
WORKER_IDLE_SECONDS = 900.0  # a job worker no task has used for this long is stopped


class Agent:
    """One silo's agent. ``run`` loops until ``stop`` is set."""

    def __init__(self, kit: Kit) -> None:
        if kit.role is not Role.SILO or kit.silo is None:
            raise ConfigError(
                f"kit '{kit.name}' belongs to a {kit.role}, not a silo", file=str(kit.kit_dir)
            )
        self.kit = kit
        self.silo = kit.name
        self.spec = kit.silo
        self.storage = kit.storage_path
        self.policy = load_policy(kit.policy_file)
        self.trusted = {
            name: parse_public_key(line, where=f"{kit.policy_file}: trusted_keys.{name}")
            for name, line in self.policy.trusted_keys.items()
        }
        self.sandboxed = self.spec.sandbox == "bubblewrap"
        self.audit = AuditLog(audit_path(self.storage), actor=self.silo)
        self.catalog = Catalog(self.storage, silo=self.silo)
        self.client = OrchestratorClient(kit, timeout=POLL_SECONDS + 15)
        self.approval = ApprovalClient(kit)
        self._workers: dict[str, WorkerProcess] = {}
        self._clearances: dict[str, Clearance] = {}
        self._secagg: dict[str, SecAggClient] = {}
        # secure aggregation: each job's next round mask, computed ahead in a thread
        self._masks: dict[str, tuple[int, Future[RoundMask]]] = {}
        self._masks_due: list[tuple[str, int]] = []
        # the words of each job's masked input, and their size in its latest round
        self._mask_words: dict[str, tuple[int, int]] = {}
        self._masker: ThreadPoolExecutor | None = None
        self._last_used: dict[str, float] = {}
        self._busy = False
        self.stop = threading.Event()

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> None:
        if not self.sandboxed:
            log.warning("silo '%s' runs job code WITHOUT a sandbox (sandbox: none)", self.silo)
        self.audit.append(
            "agent.started", sandbox=self.spec.sandbox, orchestrator=self.kit.orchestrator_url
        )
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        backoff = 0.5
        announced = False
        try:
            while not self.stop.is_set():
                try:
                    task = self.client.next_task(POLL_SECONDS)
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
                    if task.job_id is not None:
                        self._last_used[task.job_id] = time.monotonic()
                    self._handle(task)
                self._stop_idle_workers()
        finally:
            self.close()

    def _refuse_malformed(self, exc: MalformedTask) -> None:
        """Refuse a task this silo will not parse, and say so to the orchestrator."""
        log.warning("%s", exc)
        self.audit.append("task.refused", task_id=exc.task_id, reason=str(exc))
        if exc.task_id is not None:
            with contextlib.suppress(FedsiloError):
                self.client.send_result(
                    exc.task_id,
                    TaskResult(
                        ok=False, refused=True, error=f"silo '{self.silo}' refused the task: {exc}"
                    ),
                )

    def _stop_idle_workers(self) -> None:
        """Stop workers of jobs that ended without a release (e.g. the orchestrator restarted)."""
        now = time.monotonic()
        for job_id in list(self._workers):
            if now - self._last_used.get(job_id, now) > WORKER_IDLE_SECONDS:
                log.info("stopping the idle worker of job %s", job_id)
                self._release(job_id)

    def close(self) -> None:
        """Stop every job worker and the connections."""
        for job_id in list(self._workers):
            self._release(job_id)
        if self._masker is not None:
            self._masker.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        self.catalog.close()

    def _heartbeat(self) -> None:
        client = OrchestratorClient(self.kit, timeout=10)
        try:
            while not self.stop.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(FedsiloError):
                    client.heartbeat(busy=self._busy, sandbox=self.spec.sandbox)
        finally:
            client.close()

    def _handle(self, task: TaskMessage) -> None:
        started = time.monotonic()
        self._busy = True
        log.info(
            "task %s: %s job=%s round=%d",
            task.task_id[:8],
            task.kind.value,
            task.job_id,
            task.round,
        )
        try:
            result = self._dispatch(task)
        except TaskFailed as exc:
            log.warning("task %s failed: %s", task.task_id[:8], exc)
            result = TaskResult(ok=False, error=exc.detail)
        except (PolicyRejected, ClassificationError) as exc:
            log.warning("task %s refused: %s", task.task_id[:8], exc)
            result = TaskResult(ok=False, error=str(exc), refused=True)
        except FedsiloError as exc:
            log.warning("task %s failed: %s", task.task_id[:8], exc)
            result = TaskResult(ok=False, error=str(exc))
        except Exception as exc:
            log.exception("task %s failed inside the agent", task.task_id[:8])
            result = TaskResult(ok=False, error=f"internal error in the silo agent: {exc!r}")
        finally:
            self._busy = False
        if not result.ok and task.job_id is not None:
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
            self._start_masks_ahead()

    def _send_result(self, task: TaskMessage, result: TaskResult) -> None:
        for attempt in range(5):
            try:
                self.client.send_result(task.task_id, result)
                return
            except FedsiloError as exc:
                if "is not open" in str(exc):
                    log.warning("the orchestrator did not take task %s: %s", task.task_id[:8], exc)
                    return
                log.warning(
                    "could not report task %s (attempt %d): %s", task.task_id[:8], attempt + 1, exc
                )
                time.sleep(0.5 * (attempt + 1))

    # -- tasks ------------------------------------------------------------------------------

    def _dispatch(self, task: TaskMessage) -> TaskResult:
        if task.kind is TaskKind.PING:
            return self._ping()
        if task.job_id is None:
            raise FedsiloError(f"a {task.kind.value} task without a job")
        if task.kind is TaskKind.PREPARE:
            return self._prepare(task)
        if task.kind is TaskKind.FIT:
            return self._fit(task)
        if task.kind is TaskKind.EVALUATE:
            return self._evaluate(task)
        if task.kind is TaskKind.SECAGG:
            return self._secure_aggregation(task)
        if task.kind is TaskKind.RELEASE:
            self._release(task.job_id)
            return TaskResult(ok=True)
        raise FedsiloError(f"unknown task kind {task.kind}")

    def _release(self, job_id: str) -> None:
        worker = self._workers.pop(job_id, None)
        self._last_used.pop(job_id, None)
        if worker is not None:
            worker.stop()
            self.audit.append("job.ended", job_id=job_id)
        self._clearances.pop(job_id, None)
        self._secagg.pop(job_id, None)
        self._mask_words.pop(job_id, None)
        ahead = self._masks.pop(job_id, None)
        if ahead is not None:
            ahead[1].cancel()
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
            silo=self.silo, cwd=folder, log_file=folder / "worker.log", sandbox=sandbox
        )
        try:
            worker.request("noop")
        finally:
            worker.stop()
        return TaskResult(ok=True)

    def _refuse(self, task: TaskMessage, rule: str, reason: str) -> PolicyRejected:
        self.audit.append(
            "job.refused",
            job_id=task.job_id,
            job_name=task.job_name,
            author=task.author,
            rule=rule,
            reason=reason,
        )
        return PolicyRejected(self.silo, rule, reason)

    def _prepare(self, task: TaskMessage) -> TaskResult:
        assert task.job_id is not None
        job_id = task.job_id
        self.audit.append(
            "job.offered",
            job_id=job_id,
            job_name=task.job_name,
            author=task.author,
            bundle_digest=task.bundle_digest,
        )
        job_dir = self._job_dir(job_id)
        bundle = self.client.download_bundle(job_id)
        if hashlib.sha256(bundle).hexdigest() != task.bundle_digest:
            raise self._refuse(
                task, "bundle-digest", "the bundle received differs from the one the job names"
            )
        code_dir = job_dir / "code"
        try:
            manifest = unpack_bundle(bundle, code_dir)
        except SignatureError as exc:
            raise self._refuse(task, "bundle-manifest", str(exc)) from exc
        signature = check_signature(manifest.digest, bundle_signature(code_dir), self.trusted)
        inputs = resolve_inputs(task, self.catalog, self.silo)
        outputs, declassifications = classify_outputs(task.outputs, inputs)
        computes = self._computes(task)
        request = approval_request(
            task,
            silo=self.silo,
            compute=computes[SiloStep.TRAIN].name,
            computes={step.value: c.name for step, c in computes.items()},
            manifest_digest=manifest.digest,
            signature=signature,
            inputs=inputs,
            outputs=outputs,
            declassifications=declassifications,
        )
        self.audit.append(
            "approval.asked",
            job_id=job_id,
            signing=signature.status.value,
            signing_key=signature.key_name or signature.key_id,
            inputs=[f"{i.storage}:{i.dataset}" for i in inputs],
            outputs={k: v.value for k, v in outputs.items()},
        )
        answer = self.approval.ask(request)
        while answer.decision is Decision.MANUAL:
            detail = f"waiting for approval in silo '{self.silo}' (request {answer.request_id})"
            if not self.client.progress(task.task_id, detail):
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
        foreign = [i for i in inputs if i.path is None]
        if foreign:
            raise self._refuse(
                task,
                "inputs-in-this-silo",
                f"input '{foreign[0].role}' lives "
                f"in the storage of '{foreign[0].storage}'; a job in silo "
                f"'{self.silo}' reads only this silo's storage",
            )
        self._clearances[job_id] = Clearance(
            job_id,
            answer.request_id,
            answer.rule,
            answer.decided_by,
            outputs,
            privacy=task.privacy,
            rounds=task.rounds,
        )
        return self._start_worker(task, code_dir, inputs, computes)

    def _computes(self, task: TaskMessage) -> dict[SiloStep, ComputeSpec]:
        """The compute of this silo each step of the job runs on, picked by kind."""
        chosen = {}
        for step in SiloStep:
            kind = task.computes.get(step.value)
            compute = self.spec.compute_of_kind(kind)
            if compute is None:
                kinds = ", ".join(c.kind for c in self.spec.all_computes())
                raise self._refuse(
                    task,
                    "compute",
                    f"the job runs its {step.value} step on a compute of kind '{kind}'; silo "
                    f"'{self.silo}' has none (its computes are of kind: {kinds})",
                )
            chosen[step] = compute
        return chosen

    def _start_worker(
        self,
        task: TaskMessage,
        code_dir: Path,
        inputs: list[ResolvedInput],
        computes: dict[SiloStep, ComputeSpec],
    ) -> TaskResult:
        assert task.job_id is not None
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
        old = self._workers.pop(task.job_id, None)
        if old is not None:
            old.stop()
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
            "entrypoint": task.entrypoint,
            "silo": self.silo,
            "inputs": {i.role: str(path) for i, path in resolved},
            "work_dir": str(work),
            "hyperparameters": task.hyperparameters,
            "rounds": task.rounds,
            "privacy": task.privacy.model_dump(mode="json"),
        }
        started = time.perf_counter()
        out = params / "initial.safetensors"
        first, train = computes[SiloStep.PREPROCESS], computes[SiloStep.TRAIN]
        if first.name != train.name:  # the silo subgraph spans two of the silo's computes
            pre = self._spawn(task.job_id, first, work, job_dir, sandbox, init)
            try:
                pre.request("preprocess")
            finally:
                pre.stop()
        worker = self._workers[task.job_id] = self._spawn(
            task.job_id, train, work, job_dir, sandbox, init
        )
        worker.request("prepare" if first.name == train.name else "build", out=str(out))
        compute = time.perf_counter() - started
        if task.privacy.secure_aggregation is not None:
            self._mask_words[task.job_id] = (_masked_words(out), 64)
        return TaskResult(
            ok=True, params_digest=self._upload(task, out, "model"), compute_seconds=compute
        )

    def _spawn(
        self,
        job_id: str,
        compute: ComputeSpec,
        work: Path,
        job_dir: Path,
        sandbox: SandboxSpec | None,
        init: dict[str, Any],
    ) -> WorkerProcess:
        """A job worker on ``compute``, initialised with the job's code and inputs."""
        worker = WorkerProcess(
            silo=self.silo,
            cwd=work,
            log_file=job_dir / "worker.log",
            sandbox=sandbox,
            environment=compute.environment,
        )
        self.audit.append(
            "job.started",
            job_id=job_id,
            sandbox=self.spec.sandbox,
            compute=compute.name,
            worker_pid=worker.pid,
        )
        try:
            worker.request("init", **init)
        except BaseException:
            worker.stop()
            raise
        return worker

    def _upload(
        self,
        task: TaskMessage,
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
        assert task.job_id is not None
        clearance = self._clearances[task.job_id]
        classification = clearance.outputs[output]
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
        digest = self.client.upload_params(path) if data is None else self.client.upload_bytes(data)
        self.audit.append(
            "output.uploaded",
            job_id=task.job_id,
            output=output,
            round=task.round,
            sha256=digest,
            classification=classification.value,
            **audit,
        )
        return digest

    def _metrics(
        self, task: TaskMessage, metrics: dict[str, float] | None
    ) -> dict[str, float] | None:
        """Let metrics leave only under their clearance, as a bounded set of numbers."""
        if metrics is None:
            return None
        assert task.job_id is not None
        try:
            check_leaving(self.silo, "metrics", self._clearances[task.job_id].outputs["metrics"])
            return check_metrics(self.silo, metrics)
        except ClassificationError as exc:
            self.audit.append(
                "output.kept",
                job_id=task.job_id,
                output="metrics",
                round=task.round,
                reason=str(exc),
            )
            raise

    def _worker(self, job_id: str) -> WorkerProcess:
        worker = self._workers.get(job_id)
        if worker is None or not worker.alive() or job_id not in self._clearances:
            raise FedsiloError(f"the job worker of {job_id} is not running in this silo")
        return worker

    def _global(self, task: TaskMessage) -> Path:
        assert task.job_id is not None and task.params_digest is not None
        path = self._job_dir(task.job_id) / "params" / f"global-{task.params_digest}.safetensors"
        if not path.exists():
            self.client.download_params(task.job_id, task.params_digest, path)
        return path

    def _fit(self, task: TaskMessage) -> TaskResult:
        assert task.job_id is not None
        clearance = self._clearances.get(task.job_id)
        if clearance is not None and clearance.privacy.secure_aggregation is not None:
            self._party(task.job_id)  # no training, and no update, without the masks
        worker = self._worker(task.job_id)
        params = self._global(task)
        out = self._job_dir(task.job_id) / "params" / f"update-{task.round}.safetensors"
        started = time.perf_counter()
        reply = worker.request(
            "fit",
            round=task.round,
            params=str(params),
            out=str(out),
            evaluate_first=task.evaluate_first,
            config=task.config,
        )
        compute = time.perf_counter() - started
        train = self._metrics(task, reply["train_metrics"])
        evaluation = self._metrics(task, reply.get("eval_metrics"))
        if clearance is not None and clearance.privacy.secure_aggregation is not None:
            samples = float(reply["train_metrics"].get("num_samples", 0))
            masked = self._mask(task, out, params, samples)
            digest = self._upload(task, out, "model", data=masked, masked=True)
            out.unlink(missing_ok=True)  # the plain update never leaves, nor stays around
        else:
            digest = self._upload(task, out, "model")
        params.unlink(missing_ok=True)
        return TaskResult(
            ok=True,
            params_digest=digest,
            train_metrics=train,
            eval_metrics=evaluation,
            compute_seconds=compute,
        )

    # -- secure aggregation -----------------------------------------------------------------

    def _secure_aggregation(self, task: TaskMessage) -> TaskResult:
        """Hand one secure-aggregation message to this silo's party; return its answers.

        The party holds this silo's keys and the shares other silos dealt it, here in the
        agent, never in the job worker that runs the job's code. It is built from the
        privacy settings the silo approved, not from anything the task says, and refuses
        (as the silo, in its audit log) any message that would reveal too much.
        """
        from fedsilo.privacy.secagg import (
            KeyRoster,
            SecAggClient,
            SecAggProtocolError,
            ShareDelivery,
            UnmaskRequest,
            parse_message,
        )

        assert task.job_id is not None
        clearance = self._clearances.get(task.job_id)
        secure = clearance.privacy.secure_aggregation if clearance is not None else None
        if clearance is None or secure is None:
            raise self._refuse(
                task,
                "secure-aggregation",
                "this silo approved no secure aggregation for the job",
            )
        try:
            if task.secagg is None:
                if task.job_id in self._secagg:
                    raise SecAggProtocolError("secure aggregation is already set up for the job")
                party = SecAggClient(
                    self.silo,
                    job_id=task.job_id,
                    rounds=clearance.rounds,
                    threshold=secure.threshold,
                    bits=secure.fixed_point_bits,
                    clip_range=secure.clip_range,
                )
                self._secagg[task.job_id] = party
                self.audit.append("secagg.setup", job_id=task.job_id, rounds=clearance.rounds)
                return TaskResult(ok=True, secagg=(party.advertise().model_dump_json(),))
            party = self._party(task.job_id)
            message = parse_message(task.secagg)
            if not isinstance(message, KeyRoster | ShareDelivery | UnmaskRequest):
                raise SecAggProtocolError(
                    f"a silo takes no {type(message).__name__} from the orchestrator"
                )
            if isinstance(message, UnmaskRequest):
                self.audit.append(
                    "secagg.unmask",
                    job_id=task.job_id,
                    round=message.round,
                    survivors=list(message.survivors),
                    dropped=list(message.dropped),
                )
            replies = party.feed(message)
        except SecAggProtocolError as exc:
            raise self._refuse(task, "secure-aggregation", str(exc)) from exc
        if isinstance(message, ShareDelivery) and party.ready:
            self._masks_due.append((task.job_id, 1))
        elif isinstance(message, UnmaskRequest):
            self._masks_due.append((task.job_id, message.round + 1))
        return TaskResult(ok=True, secagg=tuple(r.model_dump_json() for r in replies))

    def _start_masks_ahead(self) -> None:
        """Start computing the masks of the rounds this silo waits for, once it answered.

        Expanding the masks is most of the cost of masking and needs no data, only the
        keys: done between rounds, in a thread of low priority, it is off the round's
        critical path (the answer that ends the previous round is sent first). The word
        size is the latest round's (64 bits before round 1); should the next round's plan
        say otherwise, its mask is computed again when the update is ready.
        """
        due, self._masks_due = self._masks_due, []
        for job_id, round_ in due:
            party, shape = self._secagg.get(job_id), self._mask_words.get(job_id)
            if party is None or shape is None or round_ > party.rounds:
                continue
            if self._masker is None:
                self._masker = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="secagg-mask", initializer=_lower_priority
                )
            future = self._masker.submit(party.round_mask, round_, *shape)
            self._masks[job_id] = (round_, future)

    def _mask_for(self, job_id: str, round_: int, words: int, bits: int) -> RoundMask | None:
        """The mask of ``round_`` if it was computed ahead: ``words`` words of ``bits`` bits."""
        round_ahead, future = self._masks.pop(job_id, (0, None))
        if future is None or round_ahead != round_:
            return None
        try:
            mask = future.result()
        except Exception as exc:  # computed again, in line, by the caller
            log.warning("job %s: the mask of round %d was not ready: %r", job_id, round_, exc)
            return None
        fits = mask.words.size == words and mask.words.dtype.itemsize * 8 == bits
        return mask if fits else None

    def _party(self, job_id: str) -> SecAggClient:
        party = self._secagg.get(job_id)
        if party is None:
            raise FedsiloError(
                f"secure aggregation of job {job_id} is not set up in silo '{self.silo}' "
                "(its agent may have restarted); the silo sends no update in the clear"
            )
        return party

    def _mask(
        self, task: TaskMessage, update: Path, current: Path, samples: float
    ) -> tuple[bytes, memoryview]:
        """Mask this silo's update (clipped under central DP); return the file to upload."""
        from fedsilo.privacy import MaskPlan
        from fedsilo.privacy.secagg import mask_update, masked_parts
        from fedsilo.tensors import load_parameters

        assert task.job_id is not None
        party = self._party(task.job_id)
        central = self._clearances[task.job_id].privacy.central
        plan = task.mask_plan or MaskPlan()
        words = _masked_words(current)
        self._mask_words[task.job_id] = (words, plan.word_bits)
        masked = mask_update(
            party,
            task.round,
            load_parameters(update),
            load_parameters(current),
            weight=samples if task.mask_weight is None else task.mask_weight,
            clip_norm=central.clip_norm if central is not None else None,
            mask=self._mask_for(task.job_id, task.round, words, plan.word_bits),
            plan=plan,
        )
        return masked_parts(masked)

    def _evaluate(self, task: TaskMessage) -> TaskResult:
        assert task.job_id is not None
        worker = self._worker(task.job_id)
        params = self._global(task)
        started = time.perf_counter()
        reply = worker.request("evaluate", round=task.round, params=str(params))
        compute = time.perf_counter() - started
        return TaskResult(
            ok=True,
            eval_metrics=self._metrics(task, reply["eval_metrics"]),
            compute_seconds=compute,
        )


def _masked_words(model: Path) -> int:
    """The words of a masked update of ``model``'s shape: one per value, then the weight."""
    from fedsilo.tensors import value_count

    return value_count(model) + 1


def _lower_priority() -> None:
    """Give the calling thread less CPU, as the job worker: on Linux, niceness is per thread."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


def run_agent(kit_dir: Path) -> None:
    """Run the agent of the silo kit in ``kit_dir`` until SIGTERM or SIGINT."""
    kit = load_kit(kit_dir)
    agent = Agent(kit)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("agent of silo '%s' starting; orchestrator %s", kit.name, kit.orchestrator_url)
    agent.run()
