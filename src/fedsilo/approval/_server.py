"""A silo's approval endpoint: FastAPI under uvicorn, HTTPS with mutual TLS.

Identity comes from the client certificate only, by SHA-256 fingerprint: the silo's own
certificate (its agent) may ask; the holder of the silo's ``admin.crt`` may list held
requests and decide them. Any other certificate of the federation gets 403; one from
another CA never completes the handshake. The policy decides first; only what it holds
(``manual``) waits in the queue for a person.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fedsilo.approval._models import ApprovalAnswer, ApprovalRequest, Decision
from fedsilo.approval._policy import Policy, load_policy
from fedsilo.approval._queue import POLICY, ApprovalQueue, QueueEntry, QueueState
from fedsilo.audit import AuditLog, audit_path
from fedsilo.config import Kit, Role, cert_fingerprint, load_kit
from fedsilo.errors import HTTP_STATUS, ConfigError, FedsiloError
from fedsilo.transport._http import (
    NO_TELEMETRY,
    StrictJSONRoute,
    error_response,
    invalid_request,
)
from fedsilo.transport._tls import https_config, peer_fingerprint

__all__ = ["AuditSink", "DecisionBody", "build_app", "queue_path", "serve", "server_config"]

log = logging.getLogger("fedsilo.approval")

MAX_BODY = 8 * 1024 * 1024
"""The largest request body the endpoint reads: an approval request carries the code's
diff (at most 256 KiB), its file list and the model's tensors (each bounded), so a few
MiB at most."""


class AuditSink(Protocol):
    """Where the endpoint records requests and decisions (the silo's :class:`AuditLog`)."""

    def append(self, event: str, /, **data: Any) -> Any: ...


class DecisionBody(BaseModel):
    """A person's decision: an optional reason, and optionally when it lapses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str | None = None
    # at most a century: a lapse time past every float would be stored as infinity
    expires_in_hours: Annotated[float | None, Field(gt=0, le=876_000, allow_inf_nan=False)] = None


@dataclass(frozen=True)
class _Caller:
    name: str
    role: Literal["agent", "admin"]


def queue_path(kit: Kit) -> Path:
    """Where a silo's manual queue lives: ``<storage root>/approval/queue.db``."""
    return kit.storage_path / "approval" / "queue.db"


def _identity(path: Path) -> tuple[str, str]:
    """The fingerprint and common name of the PEM certificate at ``path``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the certificate: {exc}", file=str(path)) from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else path.stem
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER)), name


class _Callers:
    """Who may call: the silo's agent (the kit's certificate) and its administrator
    (``admin.crt``), by fingerprint, read again whenever either file changes, so a renewed
    certificate is taken without a restart.

    The agent that runs when its certificate is renewed still presents the one it started
    with, so that one stays accepted beside the new one until the agent first calls with
    the new one (it restarted): no job it prepares in between is refused.
    """

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self._stamp: tuple[tuple[int, int], ...] = ()
        self._callers: dict[str, _Caller] = {}
        self._agent = ""
        self._previous_agent: str | None = None
        self.reload()

    def reload(self) -> None:
        files = (self.kit.cert_file, self.kit.admin_cert_file)
        try:
            stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        except OSError:
            stamp = ()
        if stamp == self._stamp and self._callers:
            return
        agent_fp, _ = _identity(self.kit.cert_file)
        admin_fp, admin_name = _identity(self.kit.admin_cert_file)
        if self._agent and agent_fp != self._agent:
            self._previous_agent = self._agent
        self._agent = agent_fp
        self._callers = {
            agent_fp: _Caller(self.kit.name, "agent"),
            admin_fp: _Caller(admin_name, "admin"),
        }
        self._stamp = stamp

    def who(self, fingerprint: str | None) -> _Caller | None:
        """The caller ``fingerprint`` is, if it may call."""
        self.reload()
        if fingerprint == self._agent:
            self._previous_agent = None  # the agent runs on its new certificate
        elif fingerprint is not None and fingerprint == self._previous_agent:
            return _Caller(self.kit.name, "agent")
        return self._callers.get(fingerprint or "")


def build_app(
    kit: Kit,
    *,
    policy: Policy | None = None,
    audit: AuditSink | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The endpoint's ASGI app for silo ``kit`` (no socket opened).

    ``policy`` defaults to the kit's ``policy.yaml``, ``audit`` to the silo's audit log;
    ``clock`` gives Unix time (tests move it to make decisions lapse).
    """
    if kit.role is not Role.SILO:
        raise ConfigError(
            f"kit '{kit.name}' belongs to a {kit.role}, not a silo", file=str(kit.kit_dir)
        )
    silo = kit.name
    rules = policy if policy is not None else load_policy(kit.policy_file)
    log_ = audit if audit is not None else AuditLog(audit_path(kit.storage_path), actor=silo)
    callers = _Callers(kit)
    queue = ApprovalQueue(queue_path(kit))

    app = FastAPI(
        title=f"approval endpoint of silo '{silo}'",
        docs_url=None,
        redoc_url=None,
        telemetry=NO_TELEMETRY,
    )
    app.router.route_class = StrictJSONRoute
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.state.queue = queue

    @app.middleware("http")
    async def _limit(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return JSONResponse({"error": f"request bodies are limited to {MAX_BODY} bytes"}, 413)
        if request.headers.get("transfer-encoding"):
            return error_response(411, "send a body with a Content-Length")
        return await call_next(request)

    @app.exception_handler(FedsiloError)
    async def _fedsilo_error(_request: Request, exc: FedsiloError) -> JSONResponse:
        return error_response(HTTP_STATUS.get(exc.code, 400), str(exc), code=exc.code)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    def caller(request: Request) -> _Caller:
        fingerprint = peer_fingerprint(request.scope)
        who = callers.who(fingerprint)
        if who is None:
            log_.append(
                "approval.refused",
                fingerprint=fingerprint,
                method=request.method,
                path=request.url.path,
            )
            raise HTTPException(
                403, f"this certificate may not use the approval endpoint of silo '{silo}'"
            )
        return who

    def admin(who: Annotated[_Caller, Depends(caller)]) -> _Caller:
        if who.role != "admin":
            raise HTTPException(
                403, f"only the administrator of silo '{silo}' (admin.crt) may do this"
            )
        return who

    def found(request_id: str) -> QueueEntry:
        entry = queue.get(request_id, now=clock())
        if entry is None:
            raise HTTPException(404, f"silo '{silo}' holds no request '{request_id}'")
        return entry

    def decided(answer: ApprovalAnswer, job_id: str) -> ApprovalAnswer:
        log_.append(
            "approval.decided",
            request_id=answer.request_id,
            job_id=job_id,
            decision=answer.decision.value,
            rule=answer.rule,
            reason=answer.reason,
            decided_by=answer.decided_by,
        )
        return answer

    @app.post("/v1/requests")
    def ask(body: ApprovalRequest, who: Annotated[_Caller, Depends(caller)]) -> ApprovalAnswer:
        if who.role != "agent":
            raise HTTPException(403, f"only the agent of silo '{silo}' asks for approval")
        if body.silo != silo:
            raise HTTPException(400, f"this endpoint decides for silo '{silo}', not '{body.silo}'")
        now = clock()
        log_.append(
            "approval.requested",
            job_id=body.job_id,
            job_name=body.job_name,
            author=body.author,
            readers=list(body.readers),
            signing=body.signing.value,
            signing_key=body.signing_key,
            bundle_digest=body.bundle_digest,
            inputs=[f"{i.storage}:{i.dataset}" for i in body.inputs],
            outputs={o.name: o.classification.value for o in body.outputs},
            declassifications=[d.model_dump(mode="json") for d in body.declassifications],
            output_bytes={o.name: o.bytes for o in body.outputs},
            files=len(body.files) + body.files_not_listed,
            code_changed=body.code_change.changed,
            previous_job_id=body.code_change.previous_job_id,
        )
        decision, rule, reason = rules.evaluate(body, silo=silo)
        if decision is not Decision.MANUAL:
            answer = ApprovalAnswer(
                request_id=uuid.uuid4().hex,
                decision=decision,
                rule=rule,
                reason=reason,
                decided_by=POLICY,
            )
            return decided(answer, body.job_id)
        stored = queue.find(body, now=now)
        if stored is None:
            return decided(
                queue.hold(body, rule=rule, reason=reason, now=now).answer(), body.job_id
            )
        answer = stored.answer()
        log_.append(
            "approval.repeated",
            request_id=answer.request_id,
            job_id=body.job_id,
            decision=answer.decision.value,
            decided_by=answer.decided_by,
        )
        return answer

    @app.get("/v1/requests/{request_id}")
    def state(request_id: str, _who: Annotated[_Caller, Depends(caller)]) -> ApprovalAnswer:
        return found(request_id).answer()

    @app.get("/v1/requests")
    def listing(
        _who: Annotated[_Caller, Depends(admin)],
        state: Annotated[Literal["held", "approved", "rejected", "all"], Query()] = "held",
    ) -> list[QueueEntry]:
        return queue.list(None if state == "all" else QueueState(state), now=clock())

    def decide(request_id: str, body: DecisionBody, who: _Caller, to: QueueState) -> ApprovalAnswer:
        entry = found(request_id)
        now = clock()
        hours = body.expires_in_hours
        if hours is None and to is QueueState.APPROVED:
            held_by = rules.rule(entry.rule)
            hours = held_by.expires_after_hours if held_by is not None else None
        verb = "approved" if to is QueueState.APPROVED else "rejected"
        reason = body.reason or f"{verb} by {who.name}, the administrator of silo '{silo}'"
        changed = queue.decide(
            request_id,
            state=to,
            by=who.name,
            reason=reason,
            expires_at=None if hours is None else now + hours * 3600.0,
            now=now,
        )
        if changed is None:
            raise HTTPException(
                409,
                f"request '{request_id}' is already {entry.state.value} by {entry.decided_by}",
            )
        return decided(changed.answer(), changed.job_id)

    @app.post("/v1/requests/{request_id}/approve")
    def approve(
        request_id: str, body: DecisionBody, who: Annotated[_Caller, Depends(admin)]
    ) -> ApprovalAnswer:
        return decide(request_id, body, who, QueueState.APPROVED)

    @app.post("/v1/requests/{request_id}/reject")
    def reject(
        request_id: str, body: DecisionBody, who: Annotated[_Caller, Depends(admin)]
    ) -> ApprovalAnswer:
        return decide(request_id, body, who, QueueState.REJECTED)

    return app


def server_config(kit: Kit, app: Any, *, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's configuration for ``app``: the kit's approval address, mutual TLS."""
    host, port = kit.approval_host, kit.approval_port
    if host is None or port is None:
        raise ConfigError(f"kit '{kit.name}' gives no approval address", file=str(kit.kit_dir))
    return https_config(
        app,
        host=host,
        port=port,
        cert_file=str(kit.approval_cert_file),
        key_file=str(kit.approval_key_file),
        ca_file=str(kit.ca_file),
        log_level=log_level,
        lifespan="off",
    )


def serve(kit_dir: Path, *, log_level: str = "info") -> None:
    """Serve the approval endpoint of the silo kit in ``kit_dir`` until interrupted."""
    kit = load_kit(kit_dir)
    app = build_app(kit)
    config = server_config(kit, app, log_level=log_level)
    log.info("approval endpoint of silo '%s' on %s", kit.name, kit.approval_url)
    try:
        asyncio.run(uvicorn.Server(config).serve())
    finally:
        app.state.queue.close()
