"""A job's rounds in the silo: fit and evaluate in its worker, and what of them may leave.

Parameters leave only under their clearance and through the gate of the model the job
declared (masked first under secure aggregation, :mod:`fedsilo.silo._secure`); metrics
leave only under theirs, as a bounded set of the numbers the job declared. An output
that may not leave is kept in the silo's catalog, as sensitive.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsilo.api import OrchestratorClient, Outcome, TaskResult
from fedsilo.api._messages import INLINE_PARAMS_MAX, EvaluateTask, FitTask, JobTask
from fedsilo.audit import AuditLog
from fedsilo.config import Classification
from fedsilo.config._kit import write_atomic
from fedsilo.errors import ClassificationError, FedsiloError
from fedsilo.silo._declared import gate_parameters
from fedsilo.silo._governance import check_leaving, check_metrics
from fedsilo.silo._metrics import MetricBudget, gate_metrics
from fedsilo.silo._protocol import Evaluate, Fit
from fedsilo.silo._secure import SecureParty
from fedsilo.silo._session import JobSession
from fedsilo.storage import Catalog

__all__ = ["Steps"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Steps:
    """Runs a job's fit and evaluate tasks in its worker and lets their outputs leave."""

    silo: str
    audit: AuditLog
    catalog: Catalog  # where an output that may not leave is kept
    work: OrchestratorClient  # the agent's client for downloads and uploads
    budget: MetricBudget  # the silo's policy on the metrics that leave it
    secure: SecureParty

    def fit(self, task: FitTask, session: JobSession) -> TaskResult:
        clearance = session.clearance
        secure = clearance is not None and clearance.privacy.secure_aggregation is not None
        if secure:
            self.secure.party(session, task.round)  # no training, nor update, without masks
        worker = session.worker()
        params = self._global(task, session)
        out = session.params / f"update-{task.round}.safetensors"
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
        # the step's entries (metrics let out, the update uploaded) reach the disk together,
        # before its result, which carries the metrics, leaves
        with self.audit.batch():
            train = self.metrics(task, session, trained)
            evaluation = self.metrics(task, session, reply.eval_metrics)
            samples = _samples(trained)
            inline = None
            if secure:
                masked = self.secure.mask(session, task, out, params, float(samples))
                digest = self.upload(task, session, out, "model", data=masked, masked=True)
                out.unlink(missing_ok=True)  # the plain update never leaves, nor stays around
            else:
                attached = self.attach(task, session, out, "model")
                digest, inline = attached or (self.upload(task, session, out, "model"), None)
        params.unlink(missing_ok=True)
        return TaskResult(
            outcome=Outcome.DONE,
            params_digest=digest,
            params=inline,
            num_samples=samples,
            train_metrics=train,
            eval_metrics=evaluation,
            compute_seconds=compute,
        )

    def evaluate(self, task: EvaluateTask, session: JobSession) -> TaskResult:
        worker = session.worker()
        params = self._global(task, session)
        started = time.perf_counter()
        reply = worker.request(Evaluate(round=task.round, params=str(params)))
        compute = time.perf_counter() - started
        return TaskResult(
            outcome=Outcome.DONE,
            eval_metrics=self.metrics(task, session, reply.eval_metrics),
            compute_seconds=compute,
        )

    def _global(self, task: FitTask | EvaluateTask, session: JobSession) -> Path:
        """The global model the task names, in the job's folder: as the task carries it
        (a small model), else downloaded, once."""
        path = session.params / f"global-{task.params_digest}.safetensors"
        if path.exists():
            return path
        if task.params is None:
            self.work.download_params(task.job_id, task.params_digest, path)
            return path
        actual = hashlib.sha256(task.params).hexdigest()
        if actual != task.params_digest:
            raise FedsiloError(
                f"the global model sent with the {task.kind.value} task of round {task.round} "
                f"has sha256 {actual}, not the {task.params_digest} it names; nothing of it "
                "was used"
            )
        write_atomic(path, task.params, mode=0o600)
        return path

    def upload(
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
        classification = self._clear(task, session, path, output)
        digest = self.work.upload_params(path) if data is None else self.work.upload_bytes(data)
        size = path.stat().st_size if data is None else sum(len(part) for part in data)
        self._sent(task, output, digest, size, classification, **audit)
        return digest

    def attach(
        self, task: JobTask, session: JobSession, path: Path, output: str
    ) -> tuple[str, bytes] | None:
        """``(digest, bytes)`` of an output file small enough to leave with the task's
        result (at most :data:`INLINE_PARAMS_MAX` bytes), cleared to leave as an upload
        is; ``None`` for a larger file, which is uploaded instead."""
        if path.stat().st_size > INLINE_PARAMS_MAX:
            return None
        classification = self._clear(task, session, path, output)
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        self._sent(task, output, digest, len(data), classification, inline=True)
        return digest, data

    def _clear(self, task: JobTask, session: JobSession, path: Path, output: str) -> Classification:
        """The output's classification, once it is cleared to leave: its classification
        lets it (else it is kept here, in the catalog, and this raises) and, for the
        model, it is the model the job declared."""
        assert session.clearance is not None
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
        return classification

    def _sent(
        self,
        task: JobTask,
        output: str,
        digest: str,
        size: int,
        classification: Classification,
        **audit: Any,
    ) -> None:
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

    def metrics(
        self, task: JobTask, session: JobSession, metrics: dict[str, float] | None
    ) -> dict[str, float] | None:
        """Let metrics leave only under their clearance, as a bounded set of numbers."""
        if metrics is None:
            return None
        assert session.clearance is not None
        try:
            check_leaving(self.silo, "metrics", session.clearance.outputs["metrics"])
            gated = gate_metrics(
                check_metrics(self.silo, metrics), session.metric_names, self.budget
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
            digits=self.budget.digits,
        )
        return gated.sent


def _samples(metrics: dict[str, float]) -> int:
    """What a fit trained on, as its task reported it (``num_samples``, a whole number)."""
    return max(0, int(metrics.get("num_samples", 0)))
