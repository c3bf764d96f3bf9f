"""The one exception tree of fedsilo.

Every error fedsilo raises on purpose derives from :class:`FedsiloError`; errors of the
libraries underneath (pydantic, httpx, cryptography, SQLAlchemy) are wrapped where they
enter, so callers catch one family::

    FedsiloError
    ├── ConfigError              a file or field of a spec, kit or workspace is wrong
    │   └── DatasetNotFound      a silo's catalog lacks a dataset a job names
    ├── WorkspaceError           a workspace is missing, already running, or not running
    ├── ProvisioningError        identities or kits could not be created
    ├── PolicyRejected           a silo's approval endpoint refused a job (rule, reason)
    ├── SignatureError           a bundle's files do not match its manifest
    ├── ClassificationError      data would move against its classification
    ├── AuditError               an audit log cannot be read or appended to
    ├── TransportError           talking to the orchestrator failed
    │   ├── OrchestratorUnavailable   nothing answers at the orchestrator's address
    │   └── CertificateRefused        the peer refused this kit's certificate
    ├── SiloUnavailable          a silo is offline or disconnected mid-round
    ├── SandboxUnavailable       a silo cannot confine job code (bubblewrap missing or failing)
    ├── TaskFailed               task code raised inside a silo
    ├── JobFailed                an FL job ended in failure
    ├── StepRefused              a literal pipeline asked for a step its job does not allow
    ├── PrivacyBudgetExceeded    a job would spend more epsilon than allowed
    └── AggregationError         results could not be aggregated
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fedsilo._suggest import did_you_mean, listing

__all__ = [
    "ERROR_CODES",
    "HTTP_STATUS",
    "AggregationError",
    "AuditError",
    "CertificateRefused",
    "ClassificationError",
    "ConfigError",
    "Conflict",
    "ConnectionClosed",
    "DatasetNotFound",
    "FedsiloError",
    "InvalidRequest",
    "JobFailed",
    "NotFound",
    "OrchestratorUnavailable",
    "PayloadTooLarge",
    "PolicyRejected",
    "PrivacyBudgetExceeded",
    "ProvisioningError",
    "SandboxUnavailable",
    "SignatureError",
    "SiloUnavailable",
    "StepRefused",
    "TaskFailed",
    "TransportError",
    "UploadCorrupted",
    "WorkspaceError",
    "error_class",
]


class FedsiloError(Exception):
    """Root of every error fedsilo raises on purpose.

    ``code`` names the class on the wire: a server answers ``{code, error, fields}``, and
    the client raises the class :data:`ERROR_CODES` gives for the code (see
    :func:`error_class`), so no caller matches message text.
    """

    code: ClassVar[str] = "error"


class ConfigError(FedsiloError):
    """A spec, kit or workspace file is invalid.

    ``file`` and ``field`` say where (``field`` is a dotted path such as
    ``silos.1.storage.root``); ``line`` is the 1-based line in ``file`` when known.
    """

    code: ClassVar[str] = "config"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.field = field
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.field:
            where = f"{where}: field '{self.field}'" if where else f"field '{self.field}'"
        return f"{where}: {self.message}" if where else self.message


class DatasetNotFound(ConfigError):
    """A silo's catalog has no dataset of the given name.

    ``known`` are the names the catalog has: the message suggests the closest (a typo is
    more likely than a dataset to register) and lists them.
    """

    def __init__(self, silo: str, dataset: str, known: Sequence[str] = ()) -> None:
        self.silo = silo
        self.dataset = dataset
        self.known = tuple(known)
        hint = did_you_mean(dataset, self.known)
        message = f"silo '{silo}' has no dataset '{dataset}' in its catalog{hint}; "
        message += f"its datasets: {listing(self.known)}"
        if not hint:
            message += (
                f"; to register it: fedsilo data add --silo {silo} --name {dataset} "
                "--classification sensitive PATH"
            )
        super().__init__(message)


class WorkspaceError(FedsiloError):
    """A workspace is missing, incomplete, already running or not running."""


class ProvisioningError(FedsiloError):
    """Identities or kits could not be created."""


class PolicyRejected(FedsiloError):
    """A silo refused a job: its approval endpoint, or the agent's own checks, said no.

    ``rule`` names the policy rule (or the check) that decided, ``reason`` says why.
    """

    def __init__(self, silo: str, rule: str, reason: str) -> None:
        self.silo = silo
        self.rule = rule
        self.reason = reason
        super().__init__(f"silo '{silo}' refused the job (rule '{rule}'): {reason}")


class SignatureError(FedsiloError):
    """A bundle's files do not match its manifest, or its signature does not verify."""


class AuditError(FedsiloError):
    """An audit log cannot be read or appended to (unreadable, or a line is not an entry).

    Appending to a log whose last line is damaged is refused rather than chained onto:
    the log fails closed, and ``fedsilo audit verify`` says what is wrong with it.
    """


class ClassificationError(FedsiloError):
    """Data would move or be relabelled against its classification."""


class TransportError(FedsiloError):
    """Talking to the orchestrator failed."""

    code: ClassVar[str] = "transport"


class OrchestratorUnavailable(TransportError):
    """Nothing answers at the orchestrator's address."""

    code: ClassVar[str] = "unavailable"


class CertificateRefused(TransportError):
    """The peer closed the TLS connection: it does not accept this kit's certificate."""

    code: ClassVar[str] = "forbidden"


class ConnectionClosed(CertificateRefused):
    """The orchestrator closed the connection mid-request: it refused the certificate, or
    it is shutting down or restarting (a caller that follows a job tries again)."""

    code: ClassVar[str] = "connection_closed"


class SiloUnavailable(FedsiloError):
    """A silo is offline, or disconnected while a job needed it."""

    def __init__(self, silo: str, detail: str) -> None:
        self.silo = silo
        super().__init__(f"silo '{silo}' {detail}")


class SandboxUnavailable(FedsiloError):
    """A silo set to sandbox job code cannot: bubblewrap is missing or cannot start here.

    Never a silent fallback: a silo runs unconfined code only when its spec says
    ``sandbox: none``.
    """


class TaskFailed(FedsiloError):
    """Task code raised inside a silo (its message and traceback tail are included)."""

    def __init__(self, silo: str, detail: str) -> None:
        self.silo = silo
        self.detail = detail
        super().__init__(f"task failed in silo '{silo}': {detail}")


class JobFailed(FedsiloError):
    """An FL job ended in failure; the message names the job and the cause."""

    code: ClassVar[str] = "job_failed"


class StepRefused(FedsiloError):
    """A literal pipeline asked for a step its job does not allow (the message says why):
    a silo or round outside the job, a model that is not one of its global models, a
    round trained or aggregated twice."""

    code: ClassVar[str] = "step_refused"


class PrivacyBudgetExceeded(FedsiloError):
    """A job would spend (or has spent) more epsilon than its target or a silo's cap allows.

    ``epsilon`` is the spend that was refused, ``limit`` the most that was allowed.
    """

    def __init__(self, message: str, *, epsilon: float, limit: float) -> None:
        self.epsilon = epsilon
        self.limit = limit
        super().__init__(message)


class AggregationError(FedsiloError):
    """Results of a round could not be aggregated (shape mismatch, no results, bad weights)."""

    code: ClassVar[str] = "aggregation"


class InvalidRequest(FedsiloError):
    """A request the server would not take: a body or parameter that is not valid (its
    ``fields`` say which: ``[{"field": "certificate", "problem": "..."}]``)."""

    code: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, *, fields: list[dict[str, str]] | None = None) -> None:
        self.fields = list(fields or [])
        super().__init__(message)


class NotFound(FedsiloError):
    """What a request names does not exist (or is not the caller's to know of)."""

    code: ClassVar[str] = "not_found"


class Conflict(FedsiloError):
    """A request that does not fit the thing's state now: a task already closed, a job
    without a model yet."""

    code: ClassVar[str] = "conflict"


class PayloadTooLarge(FedsiloError):
    """An upload or body past the server's limit."""

    code: ClassVar[str] = "too_large"


class UploadCorrupted(TransportError):
    """An upload's content did not match its digest (cut or changed on the way); sending it
    again may succeed."""

    code: ClassVar[str] = "digest_mismatch"


ERROR_CODES: dict[str, type[FedsiloError]] = {
    cls.code: cls
    for cls in (
        FedsiloError,
        ConfigError,
        TransportError,
        OrchestratorUnavailable,
        CertificateRefused,
        ConnectionClosed,
        JobFailed,
        StepRefused,
        AggregationError,
        InvalidRequest,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UploadCorrupted,
    )
}
"""The errors that cross HTTP, by their wire ``code`` (each class's ``code``)."""

HTTP_STATUS: dict[str, int] = {
    "invalid_request": 422,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "forbidden": 403,
    "digest_mismatch": 422,
}
"""The HTTP status a server answers each code with (any other: 400)."""


def error_class(code: object) -> type[FedsiloError]:
    """The class of wire ``code``; :class:`FedsiloError` for a code this version lacks."""
    return ERROR_CODES.get(code, FedsiloError) if isinstance(code, str) else FedsiloError
