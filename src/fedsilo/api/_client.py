"""The HTTPS client every participant uses to talk to the orchestrator.

It presents the kit's certificate (mutual TLS), checks the orchestrator's against the
federation CA, and turns transport failures into errors that say what to do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, TypeAdapter

from fedsilo.api._messages import (
    AddMemberRequest,
    AggregateRequest,
    CheckReport,
    FinishRequest,
    JobContext,
    JobInfo,
    JobTask,
    LiteralState,
    MemberInfo,
    ModelRef,
    PingTask,
    RenewRequest,
    RevokeRequest,
    SiloReport,
    StatusReport,
    StepInfo,
    StepRequest,
    SubmitRequest,
    TaskResult,
    parse_task,
)
from fedsilo.config import Kit, workspace_of
from fedsilo.config._kit import CA_FILE, KIT_FILE
from fedsilo.errors import (
    CertificateRefused,
    ConfigError,
    Conflict,
    ConnectionClosed,
    FedsiloError,
    OrchestratorUnavailable,
    TransportError,
    UploadCorrupted,
    error_class,
)
from fedsilo.jobs import JobSpec, declare_model, pack_bundle

__all__ = ["MalformedTask", "OrchestratorClient", "client_ssl_context"]

UPLOAD_ATTEMPTS = 3
# how long a caller following a job waits for an orchestrator that went away to answer
RECONNECT_SECONDS = 120.0
_JOB_LIST = TypeAdapter(list[JobInfo])


def _answer_error(response: httpx.Response, caller: str) -> FedsiloError:
    """The error an error answer stands for: the class its wire ``code`` names
    (:data:`fedsilo.errors.ERROR_CODES`), with the server's message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("error") or response.text[:2000])
    cls = error_class(body.get("code"))
    if response.status_code == 403 or cls is CertificateRefused:
        return CertificateRefused(f"the orchestrator refused '{caller}': {message}")
    return cls(message)


class MalformedTask(TransportError):
    """The orchestrator offered a task this silo will not parse (a path-like id, a bad digest).

    ``task_id`` is the offered task's id when it is well-formed, so the refusal can be
    reported back; ``None`` when even that is unusable.
    """

    def __init__(self, task_id: str | None, detail: str) -> None:
        self.task_id = task_id
        super().__init__(f"the orchestrator offered a malformed task: {detail}")


def _task_id_of(raw: bytes) -> str | None:
    try:
        value = json.loads(raw).get("task_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) else None


def certificate_not_trusted(exc: BaseException) -> bool:
    """Whether a connection failed because the server's certificate did not verify against
    the kit's CA (an :class:`ssl.SSLCertVerificationError` somewhere in ``exc``'s causes)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_certificate(kit: Kit) -> None:
    """A :class:`ConfigError` for a kit whose certificate the orchestrator's TLS would turn
    away without a word: expired, not yet valid, or not signed by the kit's own CA."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(kit.cert_file.read_bytes())
        ca = x509.load_pem_x509_certificate(kit.ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the kit's certificates: {exc}", file=str(kit.kit_dir)
        ) from exc
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc or now < cert.not_valid_before_utc:
        span = f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
        raise ConfigError(
            f"the certificate of '{kit.name}' is valid from {span}, not now; ask the "
            "federation's administrator for a renewed one (docs/provisioning.md)",
            file=str(kit.cert_file),
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"the certificate of '{kit.name}' was not signed by the CA in {CA_FILE}: the kit "
            "mixes two federations; assemble it again from one federation's reply",
            file=str(kit.kit_dir),
        ) from None


def client_ssl_context(kit: Kit) -> ssl.SSLContext:
    """TLS 1.3 client context: trusts only the federation CA, presents the kit's certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(kit.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(certfile=str(kit.cert_file), keyfile=str(kit.key_file))
    return ctx


def _start_orchestrator(kit: Kit) -> str:
    """What the holder of ``kit`` can do about an orchestrator that does not answer: start
    it, when the kit is in the workspace of a federation run here; otherwise ask the
    person who runs it, and check the address the kit holds."""
    workspace = workspace_of(kit)
    if workspace is not None:
        return f"start the federation with: fedsilo up {shlex.quote(str(workspace))}"
    try:
        where = "in " + shlex.quote(str(kit.kit_dir / KIT_FILE))
    except ConfigError:
        where = f"of kit '{kit.name}'"
    return (
        "it is not running, or not reachable from this machine: ask the federation's "
        f"administrator, and check orchestrator_host and orchestrator_port {where}"
    )


class OrchestratorClient:
    """Calls the orchestrator's REST API as the kit's participant."""

    def __init__(self, kit: Kit, *, timeout: float = 30.0) -> None:
        _check_certificate(kit)  # expired, or of another CA: a ConfigError naming it
        self.kit = kit
        self.url = kit.orchestrator_url
        self._http = httpx.Client(
            base_url=self.url,
            verify=client_ssl_context(kit),
            timeout=httpx.Timeout(timeout, connect=10.0),
            http2=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            text = str(exc)
            if certificate_not_trusted(exc):
                raise CertificateRefused(
                    f"the server at {self.url} does not hold a certificate of this kit's "
                    "federation CA; check the kit's orchestrator address"
                ) from exc
            raise OrchestratorUnavailable(
                f"the orchestrator at {self.url} is not reachable "
                f"({text or 'connection refused'}); {_start_orchestrator(self.kit)}"
            ) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise ConnectionClosed(
                f"the orchestrator at {self.url} closed the connection: it is shutting down "
                f"or restarting, or it refused this kit's certificate ('{self.kit.name}'). Is "
                "this kit from the same federation (fedsilo provision)?"
            ) from exc
        except httpx.TimeoutException as exc:
            raise TransportError(f"the orchestrator at {self.url} did not answer in time") from exc
        if response.status_code >= 400:
            raise _answer_error(response, self.kit.name)
        return response

    def _upload(self, path: str, data: bytes | Sequence[bytes | memoryview]) -> str:
        """PUT ``data`` (or its parts, sent one after the other, not joined) under its sha256."""
        parts: list[bytes | memoryview] = [data] if isinstance(data, bytes) else list(data)
        hasher = hashlib.sha256()
        for part in parts:
            hasher.update(part)
        digest = hasher.hexdigest()
        size = str(sum(memoryview(part).nbytes for part in parts))
        last = ""
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                self._request(
                    "PUT",
                    f"{path}/{digest}",
                    content=iter(self._body(parts, attempt)),
                    headers={"Content-Length": size},
                )
                return digest
            except UploadCorrupted as exc:
                last = str(exc)
                time.sleep(0.1 * attempt)
        raise TransportError(f"upload refused {UPLOAD_ATTEMPTS} times: {last}")

    def _body(self, parts: list[bytes | memoryview], attempt: int) -> list[bytes | memoryview]:
        """The parts sent on attempt ``attempt`` (a seam for tests that corrupt a transfer)."""
        return parts

    def _download(self, path: str, dest: Path, digest: str | None = None) -> str:
        response = self._request("GET", path)
        data = response.content
        actual = hashlib.sha256(data).hexdigest()
        expected = digest or response.headers.get("x-fedsilo-sha256")
        if expected and actual != expected:
            raise TransportError(f"download of {path} was corrupted (sha256 {actual})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".dl-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
        return actual

    # -- everyone ---------------------------------------------------------------------------

    def whoami(self) -> dict[str, str]:
        """Who the orchestrator takes this kit to be."""
        result: dict[str, str] = self._request("GET", "/v1/whoami").json()
        return result

    # -- submitters -------------------------------------------------------------------------

    def submit(
        self, spec: JobSpec, code_dir: Path, *, signing_key: Ed25519PrivateKey | None = None
    ) -> str:
        """Pack ``code_dir`` (signed with ``signing_key``), upload it, submit; return the job id.

        The bundle declares the model (``MODEL.json``): its task's ``model(ctx)`` is built
        here first, as a silo would build it, and each silo sends only that layout.
        """
        model = declare_model(
            code_dir,
            spec.entrypoint,
            spec.hyperparameters,
            privacy=spec.privacy,
            rounds=spec.rounds,
        )
        bundle, manifest = pack_bundle(code_dir, signing_key=signing_key, model=model)
        digest = self._upload("/v1/uploads", bundle)
        request = SubmitRequest(spec=spec, bundle_digest=digest, manifest_digest=manifest.digest)
        job_id: str = self._request(
            "POST",
            "/v1/jobs",
            content=request.model_dump_json(),
            headers={"content-type": "application/json"},
        ).json()["id"]
        return job_id

    def job(self, job_id: str, *, after: int = -1, wait: float = 0.0) -> JobInfo:
        """A job's state and history; with ``wait``, the next version after ``after``."""
        response = self._request(
            "GET", f"/v1/jobs/{job_id}", params={"after": after, "wait": wait}, timeout=wait + 15
        )
        return JobInfo.model_validate_json(response.content)

    def wait(
        self,
        job_id: str,
        *,
        on_update: Callable[[JobInfo], None] | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        """Follow the job until it finishes (long-poll); ``on_update`` sees every change.

        An orchestrator that goes away meanwhile (it restarts, and resumes the job) is
        asked again for up to :data:`RECONNECT_SECONDS` before the wait gives up.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        info = self.job(job_id)
        gone_since: float | None = None
        while True:
            if on_update is not None:
                on_update(info)
            if info.state.finished:
                return info
            left = 20.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"job {job_id} did not finish within {timeout:g} s")
            try:
                info = self.job(job_id, after=info.version, wait=min(left, 20.0))
                gone_since = None
            except (OrchestratorUnavailable, ConnectionClosed):
                now = time.monotonic()
                gone_since = gone_since or now
                if now - gone_since > RECONNECT_SECONDS:
                    raise
                time.sleep(1.0)

    def cancel(self, job_id: str) -> bool:
        return bool(self._request("POST", f"/v1/jobs/{job_id}/cancel").json()["cancelled"])

    def download_model(self, job_id: str, dest: Path) -> str:
        """Fetch a finished job's global model to ``dest`` (safetensors); return its sha256."""
        return self._download(f"/v1/jobs/{job_id}/model", dest)

    # -- literal pipelines ------------------------------------------------------------------

    def literal_state(self, job_id: str, *, wait: float = 0.0) -> LiteralState:
        """A literal pipeline's job; with ``wait``, once its silos are prepared."""
        response = self._request(
            "GET", f"/v1/jobs/{job_id}/literal", params={"wait": wait}, timeout=wait + 15
        )
        return LiteralState.model_validate_json(response.content)

    def _post(self, path: str, body: BaseModel, timeout: float | None = None) -> bytes:
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        response = self._request(
            "POST",
            path,
            content=body.model_dump_json(),
            headers={"content-type": "application/json"},
            **extra,
        )
        return response.content

    def start_step(self, job_id: str, request: StepRequest) -> StepInfo:
        """Start one step of a literal pipeline in one silo."""
        return StepInfo.model_validate_json(self._post(f"/v1/jobs/{job_id}/steps", request))

    def step(self, job_id: str, step_id: str, *, wait: float = 0.0) -> StepInfo:
        """A step's state; with ``wait``, once it finished (or ``wait`` seconds passed)."""
        response = self._request(
            "GET", f"/v1/jobs/{job_id}/steps/{step_id}", params={"wait": wait}, timeout=wait + 15
        )
        return StepInfo.model_validate_json(response.content)

    def aggregate(self, job_id: str, request: AggregateRequest) -> ModelRef:
        """Aggregate finished train steps with the job's strategy; the new global model."""
        content = self._post(f"/v1/jobs/{job_id}/aggregate", request, timeout=600)
        return ModelRef.model_validate_json(content)

    def finish(self, job_id: str, model: str) -> None:
        """End a literal pipeline's job with ``model`` as its final model."""
        self._post(f"/v1/jobs/{job_id}/finish", FinishRequest(model=model))

    def jobs(self) -> list[JobInfo]:
        """The recent jobs this caller may see, newest first, without their history."""
        response = self._request("GET", "/v1/jobs")
        return _JOB_LIST.validate_json(response.content)

    def status(self) -> StatusReport:
        return StatusReport.model_validate_json(self._request("GET", "/v1/status").content)

    def check(self, timeout: float = 15.0) -> CheckReport:
        response = self._request(
            "POST", "/v1/check", params={"timeout": timeout}, timeout=timeout + 10
        )
        return CheckReport.model_validate_json(response.content)

    # -- members (the federation's administrator) -------------------------------------------

    def members(self, *, removed: bool = False) -> list[MemberInfo]:
        """Every member and its certificates (``removed``: those removed too)."""
        response = self._request("GET", "/v1/members", params={"removed": removed})
        return [MemberInfo.model_validate(m) for m in response.json()]

    def add_member(self, certificate: str, *, compute: str | None = None) -> MemberInfo:
        """Admit the participant a CA-signed ``certificate`` (PEM) names; a silo needs its
        ``compute``'s name."""
        body = AddMemberRequest(certificate=certificate, compute=compute)
        response = self._request("POST", "/v1/members", json=body.model_dump(mode="json"))
        return MemberInfo.model_validate_json(response.content)

    def renew_member(self, name: str, certificate: str) -> MemberInfo:
        """Give member ``name`` a new certificate, valid beside its old one."""
        body = RenewRequest(certificate=certificate)
        path = f"/v1/members/{name}/certificates"
        response = self._request("POST", path, json=body.model_dump(mode="json"))
        return MemberInfo.model_validate_json(response.content)

    def revoke_member(self, name: str, fingerprint: str | None = None) -> MemberInfo:
        """Revoke one certificate of ``name`` (a fingerprint or its prefix), or all."""
        body = RevokeRequest(fingerprint=fingerprint)
        path = f"/v1/members/{name}/revoke"
        response = self._request("POST", path, json=body.model_dump(mode="json"))
        return MemberInfo.model_validate_json(response.content)

    def remove_member(self, name: str) -> MemberInfo:
        """Remove member ``name`` from the federation."""
        response = self._request("DELETE", f"/v1/members/{name}")
        return MemberInfo.model_validate_json(response.content)

    # -- silo agents ------------------------------------------------------------------------

    def next_task(self, wait: float, *, instance: str | None = None) -> PingTask | JobTask | None:
        """Long-poll for this silo's next task (``instance``: the agent process asking)."""
        params: dict[str, str | float] = {"wait": wait}
        if instance is not None:
            params["instance"] = instance
        response = self._request("GET", "/v1/agent/task", params=params, timeout=wait + 15)
        if response.status_code == 204:
            return None
        try:
            return parse_task(response.content)
        except ValueError as exc:
            raise MalformedTask(_task_id_of(response.content), str(exc)) from exc

    def heartbeat(
        self,
        *,
        busy: bool,
        sandbox: str | None = None,
        report: SiloReport | None = None,
        instance: str | None = None,
    ) -> None:
        params: dict[str, str | bool] = {"busy": busy}
        if sandbox is not None:
            params["sandbox"] = sandbox
        if instance is not None:
            params["instance"] = instance
        body = None if report is None else report.model_dump_json().encode()
        headers = {"content-type": "application/json"} if body is not None else None
        self._request("POST", "/v1/agent/heartbeat", params=params, content=body, headers=headers)

    def progress(self, task_id: str, detail: str) -> bool:
        """Tell the orchestrator how an open task stands; False once the task was withdrawn."""
        try:
            self._request("POST", f"/v1/agent/tasks/{task_id}/progress", json={"detail": detail})
        except Conflict:
            return False
        return True

    def send_result(self, task_id: str, result: TaskResult) -> None:
        self._request(
            "POST",
            f"/v1/agent/tasks/{task_id}/result",
            content=result.model_dump_json(),
            headers={"content-type": "application/json"},
        )

    def upload_params(self, path: Path) -> str:
        """Upload a parameters file; idempotent, verified by content hash, retried."""
        return self._upload("/v1/agent/uploads", path.read_bytes())

    def upload_bytes(self, parts: Sequence[bytes | memoryview]) -> str:
        """:meth:`upload_params` for a file held in memory, in parts (never joined)."""
        return self._upload("/v1/agent/uploads", parts)

    def job_context(self, job_id: str) -> JobContext:
        """The context of a running job this silo takes part in (to take it up again)."""
        return JobContext.model_validate_json(
            self._request("GET", f"/v1/agent/jobs/{job_id}/context").content
        )

    def download_bundle(self, job_id: str) -> bytes:
        return self._request("GET", f"/v1/agent/jobs/{job_id}/bundle").content

    def download_params(self, job_id: str, digest: str, dest: Path) -> None:
        self._download(f"/v1/agent/jobs/{job_id}/params/{digest}", dest, digest)
