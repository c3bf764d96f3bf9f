"""Errors stay in the silo: what task code and the job worker said, kept under an error id.

The job worker runs task code, and task code can rewrite any of fedsilo's code in that
process, so every field of a worker's reply is the task's to choose. When a step fails,
the agent keeps the whole text (message, traceback, the tail of the worker's output) in
the silo's own storage, ``<storage>/errors/<id>.json``, and sends the orchestrator only a
sentence of its own: where it failed, the exception's class when it is one the agent knows
by name (:data:`KNOWN_CLASSES`), and the error id. The silo's administrator reads the
whole of it with ``fedsilo silo errors ID``.

Every text a silo sends goes through :func:`scrub` first: no host path leaves it, no
control character, and nothing longer than its bound.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsilo import errors as _fedsilo_errors
from fedsilo.api import Outcome, PingTask, TaskKind, TaskResult
from fedsilo.api._messages import JobTask
from fedsilo.audit import AuditLog
from fedsilo.errors import ConfigError, FedsiloError, TaskFailed
from fedsilo.silo._workerproc import WorkerFailed

__all__ = [
    "ERROR_ID_PATTERN",
    "ERROR_MAX",
    "KNOWN_CLASSES",
    "PATH_PLACEHOLDER",
    "SENTENCE_MAX",
    "SHARED_MAX",
    "ErrorStore",
    "KeptError",
    "SiloErrors",
    "Stored",
    "bound",
    "known_class",
    "read_hint",
    "scrub",
    "step_words",
]

log = logging.getLogger("fedsilo.agent")

ERROR_ID_PATTERN = r"^e-[0-9a-f]{12}$"
"""An error id: ``e-`` and 12 hex digits (48 random bits), safe as a file name."""

PATH_PLACEHOLDER = "<path>"
SENTENCE_MAX = 1000
"""The most characters of a silo's own sentence (a failure, a refusal) that leave it."""
SHARED_MAX = 8 * 1024
"""The most characters of an error's message and traceback a silo that shares errors sends."""
ERROR_MAX = SENTENCE_MAX + 1 + SHARED_MAX
"""The most characters of a result's ``error`` a silo sends: its sentence, and what it shares."""
KEPT_FIELD_MAX = 1024 * 1024
"""The most characters of each kept field (message, traceback, output) the silo stores."""

_ID = re.compile(ERROR_ID_PATTERN)

# A quoted absolute path ('/srv/a b/c.csv', "C:\\data"): the whole quoted text goes.
_QUOTED = re.compile(r"""(?P<q>['"])(?:/|~[\w.-]*/|[A-Za-z]:\\)[^'"\n]*(?P=q)""")
# A bare absolute path (or ~/...): a slash not inside a word, a number or a URL, up to the
# first space, quote, bracket, colon or separator.
_BARE = re.compile(
    r"(?<![\w.~/\\:-])(?:~[\w.-]*)?/(?=[\w.~@+%=-])[^\s'\"`<>|,;:()\[\]{}]*"
    r"|(?<![\w])[A-Za-z]:\\[^\s'\"`<>|,;()\[\]{}]*"
)
# Control characters but newline and tab: nothing that moves a terminal's cursor leaves.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# a known root is replaced where a path component ends, never inside a longer name
_ROOT_END = r"(?=[/\s'\"`:,;)\]}]|$)"
_REPEATED = re.compile(f"(?:{re.escape(PATH_PLACEHOLDER)}){{2,}}")
_CUT = " … (cut)"


def scrub(text: str, *, limit: int, roots: Iterable[Path | str] = ()) -> str:
    """``text`` fit to leave the silo: host paths replaced by ``<path>``, bounded to ``limit``.

    ``roots`` are folders this host is known by (the silo's storage, its kit, the home
    folder): each is replaced first, whole, even where it holds a space. Then every
    absolute path, quoted or bare, is replaced. Control characters become ``?``. A text
    over ``limit`` characters is cut, and says so.
    """
    for root in sorted({str(r).rstrip("/") for r in roots}, key=len, reverse=True):
        if len(root) > 1:
            text = re.sub(re.escape(root) + _ROOT_END, PATH_PLACEHOLDER, text)
    text = _QUOTED.sub(lambda m: f"{m['q']}{PATH_PLACEHOLDER}{m['q']}", text)
    text = _BARE.sub(_bare, text)
    text = _REPEATED.sub(PATH_PLACEHOLDER, text)
    text = _CONTROL.sub("?", text)
    return bound(text, limit)


def _bare(match: re.Match[str]) -> str:
    """``<path>``, keeping the full stops that end a sentence after the path."""
    path = match.group(0)
    return PATH_PLACEHOLDER + "." * (len(path) - len(path.rstrip(".")))


def bound(text: str, limit: int) -> str:
    """``text``, or its first characters and a mark that the rest was cut, in ``limit``."""
    if len(text) <= limit:
        return text
    if limit <= len(_CUT):
        return text[:limit]
    return text[: limit - len(_CUT)] + _CUT


def _exception_names() -> frozenset[str]:
    names = {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    names.update(
        name
        for name in _fedsilo_errors.__all__
        if isinstance(getattr(_fedsilo_errors, name, None), type)
    )
    names.update(
        {
            "OutOfMemoryError",  # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError)
            "DistBackendError",  # torch.distributed: a collective failed
            "JSONDecodeError",
            "UnpicklingError",
            "LinAlgError",  # numpy.linalg
            "SafetensorError",
        }
    )
    return frozenset(names)


KNOWN_CLASSES: frozenset[str] = _exception_names()
"""Exception class names a silo names to the orchestrator: Python's built-in exceptions,
fedsilo's own, and a few of the libraries a task uses (torch's ``OutOfMemoryError``...).

The job worker says which class a task raised, and task code chooses what the worker says:
a name outside this set is a class of the task's own, and could spell out data."""


def known_class(claimed: object) -> str | None:
    """``claimed`` if it names a class in :data:`KNOWN_CLASSES`, else ``None``."""
    return claimed if isinstance(claimed, str) and claimed in KNOWN_CLASSES else None


def read_hint(error_id: str) -> str:
    """How the silo's administrator reads an error, as the sentence that leaves says it."""
    return (
        f"error {error_id}; the silo's administrator reads it on the silo's machine: "
        f"fedsilo silo errors {error_id} --kit KIT"
    )


class KeptError(BaseModel):
    """One error as the silo keeps it: the whole of it, for the silo's administrator.

    ``error_class`` is the class as it was named to the agent (by the job worker: any text
    the task chose); ``sent`` the sentence the orchestrator got, ``shared`` what else it got
    when the silo shares errors. ``output`` is the tail of the worker's stdout and stderr.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ERROR_ID_PATTERN)
    time: float
    silo: str
    job_id: str | None = None
    job_name: str | None = None
    task_id: str | None = None
    kind: str
    round: int = 0
    step: str
    error_class: str
    message: str = ""
    traceback: str = ""
    output: str = ""
    sent: str
    shared: str | None = None

    def text(self) -> str:
        """The whole error as ``fedsilo silo errors ID`` prints it."""
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.time))
        lines = [
            f"error {self.id} in silo '{self.silo}', {when}",
            f"job: {self.job_id or '-'}" + (f" ({self.job_name})" if self.job_name else ""),
            f"step: {self.step} (task {self.kind}, round {self.round})",
            f"class: {self.error_class}",
            f"sent to the orchestrator: {self.sent}",
        ]
        if self.shared is not None:
            lines.append("shared with the orchestrator and the submitter: message and traceback")
        for title, body in (
            ("message", self.message),
            ("traceback", self.traceback),
            ("output of the job worker (last lines)", self.output),
        ):
            if body.strip():
                lines += ["", f"-- {title} --", body.rstrip()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Stored:
    """A kept error's file: its size and sha256, as the silo's audit line records them."""

    path: Path
    size: int
    sha256: str


class ErrorStore:
    """The errors a silo keeps, one JSON file each in ``<storage>/errors`` (mode 0600)."""

    def __init__(self, storage: Path, silo: str) -> None:
        self.folder = storage / "errors"
        self.silo = silo

    def new_id(self) -> str:
        """A fresh error id no kept error has."""
        while True:
            error_id = f"e-{secrets.token_hex(6)}"
            if not self._path(error_id).exists():
                return error_id

    def write(self, error: KeptError) -> Stored:
        """Keep ``error``: written whole or not at all, readable by the silo's user only."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = error.model_dump_json(indent=2).encode()
        final = self._path(error.id)
        temporary = self.folder / f".{error.id}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        return Stored(final, len(data), hashlib.sha256(data).hexdigest())

    def get(self, error_id: str) -> KeptError:
        """The kept error ``error_id``; :class:`ConfigError` naming it if there is none."""
        if not _ID.match(error_id):
            raise ConfigError(
                f"'{error_id}' is not an error id (an error id looks like e-3fa9c2d41b07)"
            )
        path = self._path(error_id)
        try:
            return KeptError.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(
                f"silo '{self.silo}' keeps no error '{error_id}' (in {self.folder}); "
                "fedsilo silo errors, with the same options and no id, lists those it keeps"
            ) from None
        except (OSError, ValidationError) as exc:
            raise ConfigError(f"cannot read error '{error_id}': {exc}", file=str(path)) from exc

    def recent(self, limit: int = 20) -> list[KeptError]:
        """The last ``limit`` errors kept, the newest first (an unreadable file is skipped)."""
        files = []
        for path in self.folder.glob("e-*.json"):
            with contextlib.suppress(OSError):
                files.append((path.stat().st_mtime, path))
        files.sort(reverse=True)
        kept = []
        for _, path in files[: max(limit, 0)]:
            with contextlib.suppress(OSError, ValidationError):
                kept.append(KeptError.model_validate_json(path.read_bytes()))
        return sorted(kept, key=lambda e: e.time, reverse=True)

    def _path(self, error_id: str) -> Path:
        return self.folder / f"{error_id}.json"


def step_words(kind: TaskKind, round_: int) -> str:
    """Where in a job a task of ``kind`` runs, in words: ``round 3``, ``preprocessing``."""
    return {
        TaskKind.PING: "the connectivity check",
        TaskKind.CHECK: "the check before the job runs",
        TaskKind.PREPARE: "preprocessing",
        TaskKind.FIT: f"round {round_}",
        TaskKind.EVALUATE: "the final evaluation",
        TaskKind.SECAGG: f"secure aggregation (round {round_})",
        TaskKind.RELEASE: "the job's release",
    }[kind]


@dataclass(frozen=True)
class _Failure:
    """A failure as the agent saw it: what may leave (``says``) and what stays."""

    says: str
    error_class: str
    message: str
    traceback: str = ""
    output: str = ""


class SiloErrors:
    """A silo's side of its errors: what leaves of each, and where the rest is kept.

    :meth:`failed` keeps a failed task's whole error and returns the result to send;
    :meth:`scrub` fits any text the silo sends to leave it (``roots`` are this host's own
    folders: the silo's storage, its kit, the home folder). With ``share`` (the silo's
    ``share_errors``) a result also carries the error's message and traceback, scrubbed,
    and each such sharing is audited.
    """

    def __init__(
        self, silo: str, storage: Path, audit: AuditLog, *, share: bool, roots: Iterable[Path]
    ) -> None:
        self.silo = silo
        self.store = ErrorStore(storage, silo)
        self.audit = audit
        self.share = share
        folders = {storage, *roots}
        resolved = set()
        for folder in folders:
            with contextlib.suppress(OSError):
                resolved.add(folder.resolve())
        self.roots = tuple(folders | resolved)

    def scrub(self, text: str, limit: int = SENTENCE_MAX) -> str:
        """``text`` fit to leave the silo (:func:`scrub` with this host's folders)."""
        return scrub(text, limit=limit, roots=self.roots)

    def outgoing(self, result: TaskResult) -> TaskResult:
        """``result`` as it may leave: its ``error`` scrubbed again, and bounded."""
        if result.error is None:
            return result
        return result.model_copy(update={"error": self.scrub(result.error, ERROR_MAX)})

    def failed(
        self, task: PingTask | JobTask, exc: BaseException, job_name: str | None = None
    ) -> TaskResult:
        """Keep ``exc`` whole under a new error id; the result says only fedsilo's words."""
        failure = _describe(exc)
        error_id = self.store.new_id()
        hint = read_hint(error_id)
        sentence = f"{self.scrub(failure.says, SENTENCE_MAX - len(hint) - 3)} ({hint})"
        shared = None
        if self.share:
            detail = "\n".join(p for p in (failure.message, failure.traceback) if p.strip())
            shared = self.scrub(detail or failure.output, SHARED_MAX)
        step = step_words(task.kind, task.round)
        kept = KeptError(
            id=error_id,
            time=time.time(),
            silo=self.silo,
            job_id=task.job_id,
            job_name=job_name,
            task_id=task.task_id,
            kind=task.kind.value,
            round=task.round,
            step=step,
            error_class=bound(failure.error_class, 200),
            message=bound(failure.message, KEPT_FIELD_MAX),
            traceback=bound(failure.traceback, KEPT_FIELD_MAX),
            output=bound(failure.output, KEPT_FIELD_MAX),
            sent=sentence,
            shared=shared,
        )
        log.warning("task %s failed in %s: %s", task.task_id[:8], step, failure.says)
        where: dict[str, object] = {}
        try:
            stored = self.store.write(kept)
            where = {"size": stored.size, "sha256": stored.sha256}
        except OSError as exc_kept:
            log.error("could not keep error %s: %s", error_id, exc_kept)
            where = {"kept": False}
        self.audit.append(
            "task.failed",
            job_id=task.job_id,
            kind=task.kind.value,
            round=task.round,
            error_id=error_id,
            error_class=kept.error_class,
            error=sentence,
            **where,
        )
        if shared is None:
            return TaskResult(outcome=Outcome.FAILED, error=sentence, error_id=error_id)
        data = shared.encode()
        self.audit.append(
            "error.shared",
            job_id=task.job_id,
            error_id=error_id,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        return TaskResult(outcome=Outcome.FAILED, error=f"{sentence}\n{shared}", error_id=error_id)


def _describe(exc: BaseException) -> _Failure:
    """What leaves of ``exc`` and what is kept.

    A job worker's failure leaves as the class it names, if the agent knows that class by
    name. A fedsilo error of the agent's own leaves as its sentence, unless it quotes an
    error of a library underneath (its ``__cause__``), which may hold anything: then, as
    any other exception inside the agent, it leaves as its class alone.
    """
    if isinstance(exc, WorkerFailed):
        claimed = exc.claimed_class or ""
        if exc.exited:
            says = "the job worker ended without an answer"
        elif known := known_class(claimed):
            says = f"the task code raised {known}"
        elif claimed:
            says = "the task code raised an exception of a class of its own"
        else:
            says = "the job worker answered with an error"
        return _Failure(
            says,
            claimed or "-",
            exc.message,
            exc.traceback,
            exc.output,
        )
    name = type(exc).__name__
    text = "".join(traceback.format_exception(exc))
    cause = exc.__cause__
    if isinstance(exc, TaskFailed):
        says = "the task failed"
    elif isinstance(exc, FedsiloError) and (cause is None or isinstance(cause, FedsiloError)):
        says = str(exc)
    elif isinstance(exc, FedsiloError):
        says = f"the silo agent could not go on: {name}"
    else:
        says = f"internal error in the silo agent: {name}"
    return _Failure(says, name, str(exc), text)
