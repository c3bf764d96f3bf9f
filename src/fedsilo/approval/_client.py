"""Clients of a silo's approval endpoint: the agent's (fails closed) and the administrator's.

:class:`ApprovalClient` never raises for a transport problem: an endpoint that does not
answer, refuses the certificate, answers an error or answers something that is not an
:class:`ApprovalAnswer` yields a ``reject`` from rule ``approval-endpoint`` whose reason
says what went wrong and how to fix it. No answer is never taken as approval.
:class:`AdminClient` is for people: it raises clear errors instead.
"""

from __future__ import annotations

import shlex
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from fedsilo.api._client import certificate_not_trusted, client_ssl_context
from fedsilo.approval._models import ApprovalAnswer, ApprovalRequest, Decision
from fedsilo.approval._queue import QueueEntry, QueueState
from fedsilo.config import Kit, workspace_of
from fedsilo.errors import (
    CertificateRefused,
    FedsiloError,
    InvalidRequest,
    NotFound,
    TransportError,
)

__all__ = ["ENDPOINT_RULE", "WAIT_RULE", "AdminClient", "ApprovalClient"]

ENDPOINT_RULE = "approval-endpoint"
"""The rule of a ``reject`` the client makes up because the endpoint gave no valid answer."""
WAIT_RULE = "approval-wait"
"""The rule of a ``reject`` when no person decided a held job within the wait's timeout."""

_ENTRIES = TypeAdapter(list[QueueEntry])


class _Failure(Exception):
    """Why a call to the endpoint produced no usable answer (internal).

    ``status`` is the HTTP status of an error answer; ``refused`` marks a peer that would
    not accept the certificate presented.
    """

    def __init__(self, message: str, *, status: int | None = None, refused: bool = False):
        super().__init__(message)
        self.status = status
        self.refused = refused


def _http(kit: Kit, context: ssl.SSLContext, timeout: float) -> httpx.Client:
    return httpx.Client(
        base_url=kit.approval_url,
        verify=context,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        http2=False,
    )


def _start_endpoint(kit: Kit) -> str:
    """The command that starts the approval endpoint of ``kit``'s silo."""
    workspace = workspace_of(kit)
    if workspace is not None:
        return shlex.join(["fedsilo", "up", str(workspace)])
    return shlex.join(["fedsilo", "approval", "serve", "--kit", str(kit.kit_dir)])


def _approve(kit: Kit, request_id: str) -> str:
    """The command that approves ``request_id`` in ``kit``'s silo, on its machine."""
    workspace = workspace_of(kit)
    where = ["--kit", str(kit.kit_dir)]
    if workspace is not None:
        where = ["-w", str(workspace), "--silo", kit.name]
    return shlex.join(["fedsilo", "approval", "approve", request_id, *where])


def _call(http: httpx.Client, kit: Kit, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON of a 2xx answer; :class:`_Failure` with an actionable message otherwise."""
    url = kit.approval_url
    try:
        response = http.request(method, path, **kwargs)
    except httpx.ConnectError as exc:
        text = str(exc)
        if certificate_not_trusted(exc):
            raise _Failure(
                f"the server at {url} does not hold a certificate of this federation's CA; "
                "check approval_host and approval_port in the silo's kit.yaml"
            ) from exc
        raise _Failure(
            f"the approval endpoint at {url} did not answer ({text or 'connection refused'}); "
            f"its silo's administrator starts it with: {_start_endpoint(kit)}"
        ) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise _Failure(
            f"the approval endpoint at {url} closed the connection: it does not accept this "
            "certificate (a kit of another federation?) or is shutting down",
            refused=True,
        ) from exc
    except httpx.TimeoutException as exc:
        raise _Failure(f"the approval endpoint at {url} did not answer in time") from exc
    except httpx.HTTPError as exc:
        raise _Failure(f"talking to the approval endpoint at {url} failed: {exc}") from exc
    if not 200 <= response.status_code < 300:
        try:
            detail = str(response.json().get("error") or response.text)
        except (ValueError, AttributeError):
            detail = response.text[:200]
        raise _Failure(
            f"the approval endpoint at {url} answered {response.status_code}: {detail}",
            status=response.status_code,
            refused=response.status_code == 403,
        )
    try:
        return response.json()
    except ValueError as exc:
        raise _Failure(f"the approval endpoint at {url} answered something not JSON") from exc


class ApprovalClient:
    """The agent's client: asks the silo's endpoint with the silo's own certificate.

    Every method returns an :class:`ApprovalAnswer`; anything but a valid answer from the
    endpoint becomes a ``reject`` (fail closed).
    """

    def __init__(self, kit: Kit, *, timeout: float = 10.0) -> None:
        self.kit = kit
        self.url = kit.approval_url
        self._http = _http(kit, client_ssl_context(kit), timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApprovalClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _answer(self, request_id: str, method: str, path: str, **kwargs: Any) -> ApprovalAnswer:
        try:
            data = _call(self._http, self.kit, method, path, **kwargs)
            return ApprovalAnswer.model_validate(data)
        except _Failure as exc:
            reason = str(exc)
        except ValidationError as exc:
            reason = (
                f"the approval endpoint at {self.url} answered something that is not an "
                f"approval answer ({exc.error_count()} problem(s)); is another service "
                "listening on its port?"
            )
        return ApprovalAnswer(
            request_id=request_id,
            decision=Decision.REJECT,
            rule=ENDPOINT_RULE,
            reason=reason,
            decided_by=self.kit.name,
        )

    def ask(self, request: ApprovalRequest) -> ApprovalAnswer:
        """The endpoint's answer to ``request`` (asked once per FL job in this silo)."""
        body = request.model_dump(mode="json")
        return self._answer(request.job_id, "POST", "/v1/requests", json=body)

    def state(self, request_id: str) -> ApprovalAnswer:
        """The current answer for a request (the agent polls this while a job is held)."""
        return self._answer(request_id, "GET", f"/v1/requests/{request_id}")

    def wait(
        self,
        request_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        on_wait: Callable[[ApprovalAnswer], object] | None = None,
    ) -> ApprovalAnswer:
        """Poll until the request is no longer held; ``on_wait`` is called on each hold.

        After ``timeout`` seconds with no decision, the answer is a ``reject`` from rule
        ``approval-wait``: a job never runs because nobody answered.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            answer = self.state(request_id)
            if answer.decision is not Decision.MANUAL:
                return answer
            if deadline is not None and time.monotonic() >= deadline:
                return answer.model_copy(
                    update={
                        "decision": Decision.REJECT,
                        "rule": WAIT_RULE,
                        "reason": f"no person decided request {request_id} within "
                        f"{timeout:g} s; the silo's administrator approves it with: "
                        f"{_approve(self.kit, request_id)}, then submit the job again",
                        "decided_by": self.kit.name,
                    }
                )
            if on_wait is not None:
                on_wait(answer)
            time.sleep(poll)


class AdminClient:
    """The silo administrator's client (``admin.crt``): list, show, approve, reject."""

    def __init__(self, kit: Kit, *, timeout: float = 10.0) -> None:
        self.kit = kit
        self.url = kit.approval_url
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(kit.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(certfile=str(kit.admin_cert_file), keyfile=str(kit.admin_key_file))
        self._http = _http(kit, context, timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return _call(self._http, self.kit, method, path, **kwargs)
        except _Failure as exc:
            if exc.refused:
                raise CertificateRefused(str(exc)) from None
            if exc.status is not None:
                raise FedsiloError(str(exc)) from None
            raise TransportError(str(exc)) from None

    def list(self, state: QueueState | None = QueueState.HELD) -> list[QueueEntry]:
        """Requests in ``state`` (``None``: every request), oldest first."""
        params = {"state": state.value if state is not None else "all"}
        return _ENTRIES.validate_python(self._json("GET", "/v1/requests", params=params))

    def show(self, request_id: str) -> QueueEntry:
        """One request with its whole content; ``request_id`` may be a unique prefix of it."""
        entries = self.list(None)
        matches = [e for e in entries if e.request_id.startswith(request_id)]
        exact = [e for e in matches if e.request_id == request_id]
        if exact or len(matches) == 1:
            return (exact or matches)[0]
        if not matches or not request_id:
            raise NotFound(f"silo '{self.kit.name}' holds no request '{request_id}'")
        ids = ", ".join(e.request_id for e in matches)
        raise InvalidRequest(
            f"'{request_id}' begins {len(matches)} requests of silo '{self.kit.name}' ({ids}); "
            "give more of the id"
        )

    def approve(
        self, request_id: str, *, reason: str | None = None, expires_in_hours: float | None = None
    ) -> ApprovalAnswer:
        """Approve a held request (optionally only for ``expires_in_hours``); ``request_id``
        may be a unique prefix of it."""
        request_id = self.show(request_id).request_id
        body = {"reason": reason, "expires_in_hours": expires_in_hours}
        data = self._json("POST", f"/v1/requests/{request_id}/approve", json=body)
        return ApprovalAnswer.model_validate(data)

    def reject(self, request_id: str, *, reason: str | None = None) -> ApprovalAnswer:
        """Reject a held request; ``request_id`` may be a unique prefix of it."""
        request_id = self.show(request_id).request_id
        body = {"reason": reason}
        data = self._json("POST", f"/v1/requests/{request_id}/reject", json=body)
        return ApprovalAnswer.model_validate(data)
