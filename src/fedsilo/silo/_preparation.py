"""Taking a job up in the silo: its check, and its preparation up to a running worker.

Preparing a job verifies the bundle against its manifest and the signature against the
keys the silo's policy trusts, resolves the inputs in the silo's own catalog only,
computes what the silo's computes grant each step, asks the silo's approval endpoint
(waiting for a person where the policy says so), then preprocesses the inputs and starts
the job's worker (:mod:`fedsilo.silo._launch`). A check refuses early what preparation
would: a missing input, a compute kind the silo lacks, resources it cannot grant.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedsilo._suggest import did_you_mean, listing
from fedsilo.api import OrchestratorClient, Outcome, TaskResult
from fedsilo.api._messages import JobContext, JobTask
from fedsilo.approval import ApprovalClient, Decision
from fedsilo.audit import AuditLog
from fedsilo.config import Classification, ComputeSpec, ResourceGrant, SiloSpec
from fedsilo.errors import PolicyRejected, SignatureError
from fedsilo.jobs import SiloStep, bundle_signature, check_signature, unpack_bundle
from fedsilo.silo._approved import ApprovedCode, code_files
from fedsilo.silo._computes import SiloComputes
from fedsilo.silo._declared import RULE as DECLARED_MODEL
from fedsilo.silo._declared import read_declared
from fedsilo.silo._governance import (
    INPUTS_IN_CATALOG,
    Clearance,
    ResolvedInput,
    approval_request,
    classify_outputs,
    missing_inputs,
    resolve_inputs,
)
from fedsilo.silo._grant import ResourceRefused
from fedsilo.silo._launch import Launcher
from fedsilo.silo._protocol import Build, Prepare, Preprocess
from fedsilo.silo._sandbox import SandboxSpec, check_sandbox
from fedsilo.silo._secure import masked_words
from fedsilo.silo._session import JobSession
from fedsilo.silo._steps import Steps
from fedsilo.storage import Catalog

__all__ = ["Preparation"]

log = logging.getLogger("fedsilo.agent")

APPROVAL_POLL_SECONDS = 1.0


@dataclass(frozen=True, kw_only=True, eq=False)
class Preparation:
    """Checks and prepares the jobs offered to one silo; refuses, in its audit log, what
    the silo will not run."""

    silo: str
    spec: SiloSpec
    trusted: dict[str, str]  # the code-signing keys the silo's policy trusts, by name
    audit: AuditLog
    catalog: Catalog
    work: OrchestratorClient
    approval: ApprovalClient
    approved: ApprovedCode
    computes: SiloComputes
    launcher: Launcher  # starts the job's workers
    steps: Steps  # the initial model leaves through them, as every other
    stop: threading.Event  # the agent's: ends a wait for a person's approval

    def refuse(
        self, task: JobTask, rule: str, reason: str, context: JobContext | None
    ) -> PolicyRejected:
        """Refuse ``task`` as the silo, in its audit log (naming the job, if known)."""
        self.audit.append(
            "job.refused",
            job_id=task.job_id,
            job_name=context.job_name if context is not None else None,
            author=context.author if context is not None else None,
            rule=rule,
            reason=reason,
        )
        return PolicyRejected(self.silo, rule, reason)

    def check(self, task: JobTask, context: JobContext) -> TaskResult:
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
            raise self.refuse(task, INPUTS_IN_CATALOG, reason, context)
        return inputs

    def prepare(self, task: JobTask, session: JobSession, *, send_model: bool = True) -> TaskResult:
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
        bundle = self.work.download_bundle(job_id)
        if hashlib.sha256(bundle).hexdigest() != context.bundle_digest:
            raise self.refuse(
                task,
                "bundle-digest",
                "the bundle received differs from the one the job names",
                context,
            )
        code_dir = session.job_dir / "code"
        try:
            manifest = unpack_bundle(bundle, code_dir)
            declared = read_declared(code_dir)
        except SignatureError as exc:
            raise self.refuse(task, "bundle-manifest", str(exc), context) from exc
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
                raise self.refuse(
                    task,
                    answer.rule,
                    "the job was withdrawn while it waited for a person's approval",
                    context,
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
            raise self.refuse(task, answer.rule, answer.reason, context)
        self.approved.keep(name, job_id, code_dir, manifest)
        if declared is None:
            raise self.refuse(
                task,
                DECLARED_MODEL,
                "the job's bundle declares no model (MODEL.json), so no parameters could "
                "leave; submit it with `fedsilo submit` or OrchestratorClient.submit, which "
                "declare it",
                context,
            )
        foreign = [i for i in inputs if i.path is None]
        if foreign:
            raise self.refuse(
                task,
                "inputs-in-this-silo",
                f"input '{foreign[0].role}' lives "
                f"in the storage of '{foreign[0].storage}'; a job in silo "
                f"'{self.silo}' reads only this silo's storage",
                context,
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
                raise self.refuse(
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
                raise self.refuse(
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
        """Preprocess the job's inputs and start its train worker; send its initial model
        (``send_model``)."""
        context = session.context
        assert context is not None
        work, params = session.job_dir / "work", session.params
        work.mkdir(parents=True, exist_ok=True)
        params.mkdir(parents=True, exist_ok=True)
        resolved = [(i, i.path) for i in inputs if i.path is not None]
        sandbox = None
        if self.launcher.sandboxed:
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
            pre = self.launcher.spawn(
                task, session, SiloStep.PREPROCESS, first, grants, sandbox, init
            )
            try:
                pre.worker.request(Preprocess())
            finally:
                session.end_step(pre)
        step = self.launcher.spawn(task, session, SiloStep.TRAIN, train, grants, sandbox, init)
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
            params_digest=self.steps.upload(task, session, out, "model"),
            compute_seconds=compute,
        )
