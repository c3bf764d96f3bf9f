"""The orchestrator's REST API (FastAPI). Identity comes from the client certificate only."""

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fedsilo._suggest import did_you_mean, listing
from fedsilo.api._messages import (
    AddMemberRequest,
    AggregateRequest,
    CertificateInfo,
    CheckReport,
    FinishRequest,
    JobContext,
    JobInfo,
    LiteralState,
    Member,
    MemberInfo,
    ModelRef,
    RenewRequest,
    RevokeRequest,
    SiloReport,
    StatusReport,
    StepInfo,
    StepRequest,
    SubmitRequest,
    TaskResult,
)
from fedsilo.config import Role
from fedsilo.errors import HTTP_STATUS, FedsiloError, UploadCorrupted
from fedsilo.jobs import SHARE_WITH_ALL
from fedsilo.orchestrator._access import Caller, View, decide, summary, view
from fedsilo.orchestrator._blobs import DigestMismatch, TooLarge, valid_digest
from fedsilo.orchestrator._core import Orchestrator
from fedsilo.orchestrator._literal import LiteralRun
from fedsilo.orchestrator._members import Participant, Roster
from fedsilo.transport._http import (
    NO_TELEMETRY,
    StrictJSONRoute,
    error_response,
    invalid_request,
)
from fedsilo.transport._tls import peer_certificate, peer_fingerprint

__all__ = ["Caller", "create_app"]

log = logging.getLogger("fedsilo.orchestrator")

MAX_BUNDLE_UPLOAD = 64 * 1024 * 1024
MAX_PARAMS_UPLOAD = 4 * 1024 * 1024 * 1024
LONG_POLL_MAX = 30.0
# which process of a silo's agent calls: a new one means the agent restarted
Instance = Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")]


def create_app(
    orchestrator: Orchestrator,
    roster: Roster,
    *,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """Build the API over ``orchestrator``; ``roster`` says who each certificate belongs to.

    Every route passes :func:`authorize` first, which checks the caller against the route's
    row of :data:`fedsilo.orchestrator._access.ROUTES`; no route checks roles itself.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        yield
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(
        title="fedsilo orchestrator",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry=NO_TELEMETRY,
    )
    app.router.route_class = StrictJSONRoute
    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(FedsiloError)
    async def _fedsilo_error(_request: Request, exc: FedsiloError) -> JSONResponse:
        fields = getattr(exc, "fields", None)
        extra = {"fields": fields} if fields else {}
        return error_response(HTTP_STATUS.get(exc.code, 400), str(exc), code=exc.code, **extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":  # no route, as Starlette says it
            detail = f"the orchestrator has no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not a method of {request.url.path}"
        return error_response(exc.status_code, detail, headers=exc.headers)

    def member(who: Caller) -> Member:
        return Member(name=who.name, roles=sorted(r.value for r in who.roles))

    def refuse(request: Request, who: str, reason: str) -> HTTPException:
        orchestrator.audit.append(
            "request.refused",
            caller=who,
            method=request.method,
            path=request.url.path,
            reason=reason,
        )
        return HTTPException(403, reason)

    def identify(request: Request) -> Caller:
        fingerprint = peer_fingerprint(request.scope)
        who = roster.caller(fingerprint, peer_certificate(request.scope))
        if who is None:
            raise refuse(
                request,
                f"fingerprint {fingerprint}",
                "this certificate is not a participant of the federation (never one, "
                "revoked, or its holder removed); ask the federation's administrator",
            )
        return who

    def authorize(request: Request) -> Caller:
        """The caller, let through by the access table; else 403, or 404 for a job it may
        not know of (both audited)."""
        who = identify(request)
        route = request.scope.get("route")
        template = getattr(route, "path", request.url.path)
        job_id = request.path_params.get("job_id")
        job = None if job_id is None else orchestrator.job_access(job_id)
        decision = decide(f"{request.method} {template}", who, job, job_id)
        if not decision.allowed:
            if decision.status == 404 and not decision.audited:
                raise HTTPException(404, decision.reason)  # no such job: nothing to audit
            orchestrator.audit.append(
                "request.refused",
                caller=who.name,
                method=request.method,
                path=request.url.path,
                reason=decision.audited or decision.reason,
            )
            raise HTTPException(decision.status, decision.reason)
        request.state.view = decision.view
        return who

    def seen_as(request: Request, info: JobInfo) -> JobInfo:
        """``info`` as the caller may see it (the view :func:`authorize` decided)."""
        return summary(info) if request.state.view is View.SUMMARY else info

    Who = Annotated[Caller, Depends(authorize)]

    def name_of(who: Who) -> str:
        return who.name

    Name = Annotated[str, Depends(name_of)]
    # every route passes authorize, even one that forgets to ask for the caller; routes
    # added from here on carry it (FastAPI solves it once a request)
    app.router.dependencies.append(Depends(authorize))

    async def receive_blob(request: Request, digest: str, owner: str, limit: int) -> Response:
        """Take an upload named by its sha256; refuse it, saying why, before storing anything."""
        where = f"PUT {request.url.path}"
        if not valid_digest(digest):
            raise HTTPException(
                400,
                f"{where}: an upload is named by the sha256 of its content, 64 lowercase hex "
                f"digits, not '{digest[:80]}'",
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(
                413, f"{where}: the upload is {declared} bytes; the limit is {limit} bytes"
            )
        if orchestrator.blobs.has(digest):
            return Response(status_code=200)
        try:
            size = await orchestrator.blobs.receive(digest, request.stream(), limit)
        except DigestMismatch as exc:
            log.warning("upload from %s refused: %s", owner, exc)
            orchestrator.audit.append(
                "upload.refused", caller=owner, digest=digest, reason=str(exc)
            )
            raise UploadCorrupted(f"content does not match its digest: {exc}") from exc
        except TooLarge as exc:
            raise HTTPException(413, f"{where}: {exc}") from exc
        except ClientDisconnect:
            log.warning("upload %s from %s cut off by its sender; nothing kept", digest, owner)
            return Response(status_code=400)  # nobody is left to read it
        orchestrator.store.add_blob(digest, size, owner)
        return Response(status_code=201)

    def receive_inline(result: TaskResult, owner: str) -> TaskResult:
        """Store the update a result carries (a small one, sent inline rather than uploaded)
        as an upload is stored: only if its sha256 is the digest the result names."""
        data = result.params
        assert data is not None
        digest = hashlib.sha256(data).hexdigest()
        if digest != result.params_digest:
            orchestrator.audit.append(
                "upload.refused",
                caller=owner,
                digest=result.params_digest,
                reason=f"the update sent with a result has sha256 {digest}",
            )
            raise UploadCorrupted(
                f"the update sent with the result does not match its digest "
                f"{result.params_digest} (its sha256 is {digest}); send the result again"
            )
        if not orchestrator.blobs.has(digest):
            orchestrator.blobs.put_bytes(data)
            orchestrator.store.add_blob(digest, len(data), owner)
        return result.model_copy(update={"params": None})

    # -- everyone ---------------------------------------------------------------------------

    @app.get("/v1/whoami")
    async def whoami(who: Who) -> dict[str, str]:
        return {
            "name": who.name,
            "role": who.role.value,
            "roles": ", ".join(sorted(r.value for r in who.roles)),
            "federation": orchestrator.federation,
        }

    # -- silo agents ------------------------------------------------------------------------

    @app.get("/v1/agent/task")
    async def next_task(
        request: Request,
        name: Name,
        wait: Annotated[float, Query(ge=0, le=LONG_POLL_MAX)] = 20.0,
        instance: Instance = None,
    ) -> Response:
        if instance is not None:
            orchestrator.dispatch.seen(name, instance=instance)
        task = await orchestrator.dispatch.next_task(name, wait, gone=request.is_disconnected)
        if task is None:
            return Response(status_code=204)
        return Response(task, media_type="application/json")

    @app.post("/v1/agent/heartbeat", status_code=204)
    async def heartbeat(
        name: Name,
        busy: bool = False,
        sandbox: str | None = None,
        report: SiloReport | None = None,
        instance: Instance = None,
    ) -> None:
        orchestrator.dispatch.seen(
            name, busy=busy, sandbox=sandbox, report=report, instance=instance
        )

    @app.post("/v1/agent/tasks/{task_id}/progress", status_code=204)
    async def task_progress(task_id: str, body: dict[str, str], name: Name) -> None:
        orchestrator.dispatch.seen(name)
        if not orchestrator.dispatch.progress(name, task_id, str(body.get("detail", ""))[:500]):
            raise HTTPException(409, f"task {task_id} is no longer open for silo '{name}'")

    @app.post("/v1/agent/tasks/{task_id}/result", status_code=204)
    async def task_result(task_id: str, result: TaskResult, name: Name) -> None:
        orchestrator.dispatch.seen(name)
        if not orchestrator.dispatch.holds(name, task_id):
            raise HTTPException(409, f"task {task_id} is not open for silo '{name}'")
        if result.params is not None:
            result = receive_inline(result, name)
        if not orchestrator.dispatch.deliver(name, task_id, result):
            raise HTTPException(409, f"task {task_id} is not open for silo '{name}'")

    @app.put("/v1/agent/uploads/{digest}")
    async def agent_upload(digest: str, request: Request, name: Name) -> Response:
        orchestrator.dispatch.seen(name)
        return await receive_blob(request, digest, name, MAX_PARAMS_UPLOAD)

    @app.get("/v1/agent/jobs/{job_id}/bundle")
    async def job_bundle(job_id: str, name: Name) -> FileResponse:
        digest = orchestrator.bundle_for(name, job_id)
        if digest is None:
            raise HTTPException(404, f"silo '{name}' takes no part in a running job {job_id}")
        return FileResponse(orchestrator.blobs.path(digest))

    @app.get("/v1/agent/jobs/{job_id}/context")
    async def job_context(job_id: str, name: Name) -> JobContext:
        context = await asyncio.to_thread(orchestrator.context_for, name, job_id)
        if context is None:
            raise HTTPException(404, f"silo '{name}' takes no part in a running job {job_id}")
        return context

    @app.get("/v1/agent/jobs/{job_id}/params/{digest}")
    async def job_params(job_id: str, digest: str, name: Name) -> FileResponse:
        if not valid_digest(digest) or not orchestrator.may_read_params(name, job_id, digest):
            raise HTTPException(404, f"no global model {digest[:12]} of job {job_id} for '{name}'")
        return FileResponse(orchestrator.blobs.path(digest))

    # -- submitters -------------------------------------------------------------------------

    @app.put("/v1/uploads/{digest}")
    async def submitter_upload(digest: str, request: Request, name: Name) -> Response:
        return await receive_blob(request, digest, name, MAX_BUNDLE_UPLOAD)

    @app.post("/v1/jobs", status_code=201, response_model=dict[str, str])
    async def submit(body: SubmitRequest, name: Name) -> Any:
        submitters = roster.submitters()
        for position, reader in enumerate(body.spec.share_with):
            if reader != SHARE_WITH_ALL and reader not in submitters:
                return error_response(
                    422,
                    f"share_with names '{reader}'{did_you_mean(reader, submitters)}, who is "
                    f"not a submitter of federation '{orchestrator.federation}' (its "
                    f"submitters: {listing(sorted(submitters))})",
                    fields=[{"field": f"spec.share_with.{position}", "problem": "not a submitter"}],
                )
        return {"id": await orchestrator.submit(name, body)}

    @app.get("/v1/jobs")
    async def jobs(who: Who) -> list[JobInfo]:
        """The recent jobs the caller may see, newest first, without their history."""
        return [
            info.model_copy(update={"history": []})
            for info in await orchestrator.visible_jobs(lambda job: view(job.grants(who)))
        ]

    @app.get("/v1/jobs/{job_id}")
    async def job(
        job_id: str,
        request: Request,
        _: Name,
        after: Annotated[int, Query(description="Wait for a version past this one.")] = -1,
        wait: Annotated[float, Query(ge=0, le=LONG_POLL_MAX)] = 0.0,
    ) -> JobInfo:
        info = await orchestrator.job_info(job_id, after=after, wait=wait)
        if info is None:
            raise HTTPException(404, f"no job '{job_id}'")
        return seen_as(request, info)

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202)
    async def cancel(job_id: str, who: Who) -> dict[str, bool]:
        cancelled = orchestrator.cancel(job_id, by=who.name)
        if cancelled:
            orchestrator.audit.append("job.cancel", job=job_id, caller=who.name)
        return {"cancelled": cancelled}

    @app.get("/v1/jobs/{job_id}/model")
    async def model(job_id: str, who: Who) -> FileResponse:
        row = orchestrator.store.job(job_id)
        if row is None:
            raise HTTPException(404, f"no job '{job_id}'")
        if row.model_digest is None:
            raise HTTPException(409, f"job '{job_id}' has no final model (state: {row.state})")
        return FileResponse(
            orchestrator.blobs.path(row.model_digest),
            media_type="application/octet-stream",
            headers={"x-fedsilo-sha256": row.model_digest},
        )

    # -- literal pipelines: the job's own submitter drives it step by step ------------------

    def literal(job_id: str, name: str, *, steps: tuple[str, ...] = ()) -> LiteralRun:
        """The running literal pipeline ``job_id``: 404 for a job or step that does not exist."""
        if orchestrator.store.job(job_id) is None:
            raise HTTPException(404, f"no job '{job_id}'")
        run = orchestrator.literal(job_id, name)
        missing = [s for s in steps if s not in run.ledger.steps]
        if missing:
            raise HTTPException(404, f"job '{job_id}' has no step '{missing[0]}'")
        return run

    @app.get("/v1/jobs/{job_id}/literal")
    async def literal_state(
        job_id: str,
        name: Name,
        wait: Annotated[float, Query(ge=0, le=LONG_POLL_MAX)] = 0.0,
    ) -> LiteralState:
        return await literal(job_id, name).wait_ready(wait)

    @app.post("/v1/jobs/{job_id}/steps", status_code=201)
    async def literal_step(job_id: str, body: StepRequest, name: Name) -> StepInfo:
        run = literal(job_id, name)
        if body.silo not in orchestrator.silos:
            raise HTTPException(
                404,
                f"silo '{body.silo}' is not in job {job_id}: federation "
                f"'{orchestrator.federation}' has no such silo"
                f"{did_you_mean(body.silo, orchestrator.silos)} "
                f"(its silos: {listing(orchestrator.silos)})",
            )
        return run.step(body.kind, body.silo, body.model, body.round)

    @app.get("/v1/jobs/{job_id}/steps/{step_id}")
    async def literal_step_info(
        job_id: str,
        step_id: str,
        name: Name,
        wait: Annotated[float, Query(ge=0, le=LONG_POLL_MAX)] = 0.0,
    ) -> StepInfo:
        return await literal(job_id, name, steps=(step_id,)).step_info(step_id, wait)

    @app.post("/v1/jobs/{job_id}/aggregate")
    async def literal_aggregate(job_id: str, body: AggregateRequest, name: Name) -> ModelRef:
        run = literal(job_id, name, steps=body.steps)
        digest = await run.aggregate(body.steps, body.round)
        return ModelRef(model=digest, round=body.round)

    @app.post("/v1/jobs/{job_id}/finish", status_code=202)
    async def literal_finish(job_id: str, body: FinishRequest, name: Name) -> dict[str, bool]:
        literal(job_id, name).finish(body.model)
        return {"finished": True}

    @app.get("/v1/status")
    async def status(who: Who) -> StatusReport:
        """The silos and jobs the caller may see, and the federation's members."""
        report = await orchestrator.status(
            visible=lambda job: view(job.grants(who)),
            silos=None if Role.SILO not in who.roles else (who.name,),
        )
        members = [
            Member(name=p.name, roles=sorted(r.value for r in p.roles), expires=p.expires)
            for p in roster.members()
        ]
        return report.model_copy(update={"you": member(who), "members": members})

    @app.post("/v1/check")
    async def check(
        _: Name,
        timeout: Annotated[float, Query(gt=0, le=120)] = 15.0,
    ) -> CheckReport:
        return await orchestrator.check(timeout)

    # -- members (the federation's administrator) -------------------------------------------

    def member_info(p: Participant) -> MemberInfo:
        return MemberInfo(
            name=p.name,
            role=p.role.value,
            roles=sorted(r.value for r in p.roles),
            compute=p.compute,
            added_by=p.added_by,
            removed_by=p.removed_by,
            certificates=[
                CertificateInfo(
                    fingerprint=c.fingerprint,
                    not_after=c.not_after,
                    revoked_at=c.revoked_at,
                    revoked_by=c.revoked_by,
                )
                for c in p.certificates
            ],
        )

    def shut_out(p: Participant, why: str) -> None:
        """A member that may no longer connect: a silo's open tasks fail naming it."""
        if p.role is Role.SILO and not roster.connected_as(p.name):
            orchestrator.dispatch.expel_silo(p.name, f"silo '{p.name}' {why}", removed=not p.active)

    @app.get("/v1/members")
    async def members_list(_: Name, removed: bool = False) -> list[MemberInfo]:
        """Every member with its certificates (``removed``: those removed too)."""
        return [member_info(p) for p in roster.members(removed=removed)]

    @app.post("/v1/members", status_code=201)
    async def members_add(body: AddMemberRequest, name: Name) -> MemberInfo:
        added = roster.add(body.certificate, compute=body.compute, by=name)
        if added.role is Role.SILO:
            orchestrator.dispatch.admit_silo(added.name)
        return member_info(added)

    @app.post("/v1/members/{member}/certificates", status_code=201)
    async def members_renew(member: str, body: RenewRequest, name: Name) -> MemberInfo:
        return member_info(roster.renew(member, body.certificate, by=name))

    @app.post("/v1/members/{member}/revoke")
    async def members_revoke(member: str, body: RevokeRequest, name: Name) -> MemberInfo:
        revoked = roster.revoke(member, body.fingerprint, by=name)
        shut_out(revoked, f"lost its certificate: revoked by {name}")
        return member_info(revoked)

    @app.delete("/v1/members/{member}")
    async def members_remove(member: str, name: Name) -> MemberInfo:
        removed = roster.remove(member, by=name)
        shut_out(removed, f"was removed from federation '{orchestrator.federation}' by {name}")
        return member_info(removed)

    return app
