"""The silo agent: connects out to the orchestrator, pulls tasks, runs them in job workers.

A silo opens no port. The agent verifies each job's bundle against its manifest, resolves
the job's inputs in its own catalog only, runs the task code in a separate worker process
(never in the agent), and uploads only model parameters and metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from fedsilo.api import OrchestratorClient, TaskKind, TaskMessage, TaskResult
from fedsilo.config import Kit, Role, load_kit
from fedsilo.errors import ConfigError, FedsiloError, SignatureError, TaskFailed, TransportError
from fedsilo.jobs import unpack_bundle
from fedsilo.silo._workerproc import WorkerProcess
from fedsilo.storage import Catalog

__all__ = ["Agent", "run_agent"]

log = logging.getLogger("fedsilo.agent")

POLL_SECONDS = 20.0
HEARTBEAT_SECONDS = 1.0
WORKER_IDLE_SECONDS = 900.0  # a job worker no task has used for this long is stopped


class Agent:
    """One silo's agent. ``run`` loops until ``stop`` is set."""

    def __init__(self, kit: Kit) -> None:
        if kit.role is not Role.SILO:
            raise ConfigError(
                f"kit '{kit.name}' belongs to a {kit.role}, not a silo", file=str(kit.kit_dir)
            )
        self.kit = kit
        self.silo = kit.name
        self.storage = kit.storage_path
        self.catalog = Catalog(self.storage, silo=self.silo)
        self.client = OrchestratorClient(kit, timeout=POLL_SECONDS + 15)
        self._workers: dict[str, WorkerProcess] = {}
        self._last_used: dict[str, float] = {}
        self._busy = False
        self.stop = threading.Event()

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> None:
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        backoff = 0.5
        announced = False
        try:
            while not self.stop.is_set():
                try:
                    task = self.client.next_task(POLL_SECONDS)
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

    def _stop_idle_workers(self) -> None:
        """Stop workers of jobs that ended without a release (e.g. the orchestrator restarted)."""
        now = time.monotonic()
        for job_id in list(self._workers):
            if now - self._last_used.get(job_id, now) > WORKER_IDLE_SECONDS:
                log.info("stopping the idle worker of job %s", job_id)
                self._workers.pop(job_id).stop()
                self._last_used.pop(job_id, None)

    def close(self) -> None:
        """Stop every job worker and the connections."""
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()
        self.client.close()
        self.catalog.close()

    def _heartbeat(self) -> None:
        client = OrchestratorClient(self.kit, timeout=10)
        try:
            while not self.stop.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(FedsiloError):
                    client.heartbeat(busy=self._busy)
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
        except FedsiloError as exc:
            log.warning("task %s failed: %s", task.task_id[:8], exc)
            result = TaskResult(ok=False, error=str(exc))
        except Exception as exc:
            log.exception("task %s failed inside the agent", task.task_id[:8])
            result = TaskResult(ok=False, error=f"internal error in the silo agent: {exc!r}")
        finally:
            self._busy = False
        result = result.model_copy(update={"seconds": time.monotonic() - started})
        for attempt in range(5):
            try:
                self.client.send_result(task.task_id, result)
                return
            except TransportError as exc:
                log.warning(
                    "could not report task %s (attempt %d): %s", task.task_id[:8], attempt + 1, exc
                )
                time.sleep(0.5 * (attempt + 1))
            except FedsiloError as exc:
                log.warning("the orchestrator did not take task %s: %s", task.task_id[:8], exc)
                return

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
        if task.kind is TaskKind.RELEASE:
            worker = self._workers.pop(task.job_id, None)
            if worker is not None:
                worker.stop()
            shutil.rmtree(self._job_dir(task.job_id) / "params", ignore_errors=True)
            return TaskResult(ok=True)
        raise FedsiloError(f"unknown task kind {task.kind}")

    def _job_dir(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id

    def _ping(self) -> TaskResult:
        folder = self.storage / "check"
        worker = WorkerProcess(silo=self.silo, cwd=folder, log_file=folder / "worker.log")
        try:
            worker.request("noop")
        finally:
            worker.stop()
        return TaskResult(ok=True)

    def _prepare(self, task: TaskMessage) -> TaskResult:
        assert task.job_id is not None
        job_dir = self._job_dir(task.job_id)
        bundle = self.client.download_bundle(task.job_id)
        if hashlib.sha256(bundle).hexdigest() != task.bundle_digest:
            raise SignatureError("the bundle received differs from the one the job names")
        code_dir = job_dir / "code"
        unpack_bundle(bundle, code_dir)
        inputs = {role: str(self.catalog.path_of(name)) for role, name in task.inputs.items()}
        old = self._workers.pop(task.job_id, None)
        if old is not None:
            old.stop()
        started = time.perf_counter()
        worker = WorkerProcess(
            silo=self.silo, cwd=job_dir / "work", log_file=job_dir / "worker.log"
        )
        self._workers[task.job_id] = worker
        worker.request(
            "init",
            code_dir=str(code_dir),
            entrypoint=task.entrypoint,
            silo=self.silo,
            inputs=inputs,
            work_dir=str(job_dir / "work"),
            hyperparameters=task.hyperparameters,
        )
        out = job_dir / "params" / "initial.safetensors"
        worker.request("prepare", out=str(out))
        compute = time.perf_counter() - started
        return TaskResult(
            ok=True, params_digest=self.client.upload_params(out), compute_seconds=compute
        )

    def _worker(self, job_id: str) -> WorkerProcess:
        worker = self._workers.get(job_id)
        if worker is None or not worker.alive():
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
        digest = self.client.upload_params(out)
        params.unlink(missing_ok=True)
        return TaskResult(
            ok=True,
            params_digest=digest,
            train_metrics=reply["train_metrics"],
            eval_metrics=reply.get("eval_metrics"),
            compute_seconds=compute,
        )

    def _evaluate(self, task: TaskMessage) -> TaskResult:
        assert task.job_id is not None
        worker = self._worker(task.job_id)
        params = self._global(task)
        started = time.perf_counter()
        reply = worker.request("evaluate", round=task.round, params=str(params))
        compute = time.perf_counter() - started
        return TaskResult(ok=True, eval_metrics=reply["eval_metrics"], compute_seconds=compute)


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
