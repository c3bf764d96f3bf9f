"""Hash-chained, append-only audit logs.

Where the logs live: every participant with storage keeps one log under its own storage
root, written only by that participant's processes::

    <silo storage root>/audit/audit.jsonl          each silo (its agent, its approval)
    <orchestrator storage root>/audit/audit.jsonl  the orchestrator

:func:`audit_path` computes that path. The file is created with mode 0600 and the folders
above it that did not exist with mode 0700.

Format: one JSON object per line, UTF-8, in canonical form (keys sorted, no spaces, see
:func:`canonical_json`), each line ending in ``\\n``. An entry carries

- ``seq``, 1-based and increasing by one per line;
- ``prev``, the SHA-256 of the exact bytes of the previous line (without its newline), or
  :data:`GENESIS` on the first line;
- ``hash``, the SHA-256 of the canonical JSON of all its other fields.

So a line cannot be edited, deleted, moved or slipped in without :func:`verify_log`
naming it. What a chain cannot show from the file alone: that lines were removed from its
end (the shorter file is a valid chain; pass ``expect_at_least`` with a count remembered
elsewhere), and a rewrite of every line from some point on with freshly computed hashes
(the hashes carry no key; compare with a count or line hash recorded outside the file).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from fedsilo.errors import AuditError

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditVerification",
    "audit_path",
    "canonical_json",
    "read_log",
    "verify_log",
]

GENESIS = "0" * 64
"""The ``prev`` of a log's first line: there is no previous line to hash."""

AUDIT_DIR = "audit"
AUDIT_FILE = "audit.jsonl"
_HEX64 = r"^[0-9a-f]{64}$"
_CHUNK = 64 * 1024


class AuditEntry(BaseModel):
    """One line of an audit log: who did what, when, chained to the line before it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    seq: Annotated[int, Field(ge=1)]
    """Position in the log, 1-based; each line's is one more than the line before."""
    time: str
    """When the entry was written, ISO 8601 in UTC (``2024-05-01T12:00:00.000000Z``)."""
    actor: str
    """The participant that wrote it (a silo's or the orchestrator's name)."""
    event: str
    """What happened, dotted (``job.refused``, ``output.uploaded``)."""
    data: dict[str, JsonValue]
    """The event's details: JSON values only, never data contents."""
    prev: Annotated[str, Field(pattern=_HEX64)]
    """SHA-256 (hex) of the previous line's bytes, or :data:`GENESIS` for the first line."""
    hash: Annotated[str, Field(pattern=_HEX64)]
    """SHA-256 (hex) of the canonical JSON of all the other fields."""


@dataclass(frozen=True)
class AuditVerification:
    """What :func:`verify_log` found.

    ``entries`` counts the lines that verified: all of them when ``ok``, otherwise those
    before ``first_bad_line`` (the 1-based line number of the first line that is wrong, or
    ``None`` when no line of the file is wrong but lines are missing from its end).
    ``problem`` says what is wrong in words, naming the line.
    """

    ok: bool
    entries: int
    first_bad_line: int | None = None
    problem: str | None = None


def audit_path(storage_root: Path) -> Path:
    """The audit log of the participant whose storage root is ``storage_root``."""
    return Path(storage_root) / AUDIT_DIR / AUDIT_FILE


def canonical_json(obj: object) -> str:
    """The one serialisation the log hashes and stores: sorted keys, no spaces, raw UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class AuditLog:
    """The append-only audit log at ``path``, written as participant ``actor``.

    Safe to share between threads and between processes: every append holds an exclusive
    ``flock`` on the file (and a lock of this object), reads the last line to chain onto,
    writes one line and ``fsync``-s it before returning, so an entry that was returned is
    on disk. Inside :meth:`batch`, the thread's entries are on disk when the batch ends.
    """

    def __init__(self, path: Path, *, actor: str) -> None:
        self._path = Path(path)
        self._actor = actor
        self._lock = threading.Lock()
        self._batching = threading.local()  # depth of this thread's open batches
        _create(self._path)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Entries this thread appends inside the block are written at once, as always,
        and made durable together, with one ``fsync`` as the block ends (also by an
        exception). For a step that records several events before anything it records
        leaves the process: one disk flush instead of one per event."""
        depth = getattr(self._batching, "depth", 0)
        self._batching.depth = depth + 1
        try:
            yield
        finally:
            self._batching.depth = depth
            if depth == 0 and getattr(self._batching, "dirty", False):
                self._batching.dirty = False
                fd = _open(self._path, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the file's data, whichever descriptor wrote it
                finally:
                    os.close(fd)

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def actor(self) -> str:
        """The participant this log's entries are written as."""
        return self._actor

    def append(self, event: str, **data: object) -> AuditEntry:
        """Write one entry for ``event`` with details ``data`` and return it.

        Values may be JSON values, paths (written as strings), enums (their value) and
        datetimes or dates (ISO 8601), nested in dicts with string keys, lists and tuples.
        Anything else raises :class:`TypeError` before anything is written.
        :class:`AuditError` if the log's last line is damaged.
        """
        if not isinstance(event, str) or not event:
            raise TypeError(f"an audit event is a non-empty string, not {event!r}")
        clean = {key: _jsonable(value, f"data[{key!r}]") for key, value in data.items()}
        with self._lock:
            fd = _open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = self._head(fd)
                fields: dict[str, object] = {
                    "seq": seq,
                    "time": _now(),
                    "actor": self._actor,
                    "event": event,
                    "data": clean,
                    "prev": prev,
                }
                entry = AuditEntry.model_validate({**fields, "hash": _fields_hash(fields)})
                _write_all(fd, (canonical_json(entry.model_dump()) + "\n").encode("utf-8"))
                if getattr(self._batching, "depth", 0):
                    self._batching.dirty = True  # flushed as the batch ends
                else:
                    os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def entries(self) -> list[AuditEntry]:
        """Every entry, oldest first (:class:`AuditError` if a line is not an entry)."""
        return read_log(self._path)

    def tail(self, n: int) -> list[AuditEntry]:
        """The last ``n`` entries, oldest first, read from the end of the file."""
        if n < 0:
            raise ValueError(f"tail needs n >= 0, not {n}")
        if n == 0:
            return []
        fd = _open(self._path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            lines, _ = _last_lines(fd, n)
        finally:
            os.close(fd)
        return [_entry_or_raise(raw, self._path, None) for raw in lines]

    def _head(self, fd: int) -> tuple[int, str]:
        """The ``seq`` and ``prev`` of the next entry: what the last line chains to."""
        lines, terminated = _last_lines(fd, 1)
        if not lines:
            return 1, GENESIS
        if not terminated:
            raise AuditError(
                f"the last line of {self._path} is incomplete; refusing to append to a "
                "damaged log (see: fedsilo audit verify)"
            )
        last = _entry_or_raise(lines[-1], self._path, None)
        return last.seq + 1, hashlib.sha256(lines[-1]).hexdigest()


def read_log(path: Path) -> list[AuditEntry]:
    """Every entry of the log at ``path``, oldest first; ``[]`` if there is no such file.

    Reads without creating anything. :class:`AuditError` names the first line that is not
    an entry; it does not check the chain (that is :func:`verify_log`).
    """
    raw = _read_all(Path(path))
    if raw is None:
        return []
    lines, _ = _split_lines(raw)
    return [_entry_or_raise(line, Path(path), number) for number, line in enumerate(lines, 1)]


def verify_log(path: Path, expect_at_least: int | None = None) -> AuditVerification:
    """Check the chain of the log at ``path`` and name its first bad line.

    Finds a line edited (its hash no longer matches, or the next line's ``prev`` does
    not), deleted (a gap in ``seq``), moved or swapped (out of order), inserted (two lines
    chain to the same predecessor, or a line repeats an earlier one) and a last line cut
    short. A missing or empty file is a valid log of 0 entries.

    Removing lines from the end leaves a valid, shorter chain that the file alone cannot
    tell from a log that never had them. A verifier that remembers how many entries it saw
    before passes ``expect_at_least`` and gets a failure when the log now has fewer.
    """
    raw = _read_all(Path(path))
    lines, terminated = _split_lines(raw or b"")
    parsed = [_parse(line) for line in lines]
    expected_seq, expected_prev = 1, GENESIS
    for k, (line, (entry, why)) in enumerate(zip(lines, parsed, strict=True)):
        number = k + 1
        if entry is None:
            if number == len(lines) and not terminated:
                problem = f"line {number} is truncated: the log ends in the middle of it"
            elif why == "edited":
                problem = f"line {number} was edited"
            else:
                problem = f"line {number} is not an audit entry ({why})"
            return AuditVerification(False, k, number, problem)
        if entry.seq != expected_seq or entry.prev != expected_prev:
            bad, problem = _diagnose(lines, parsed, k, expected_seq, expected_prev)
            return AuditVerification(False, bad - 1, bad, problem)
        expected_seq, expected_prev = entry.seq + 1, hashlib.sha256(line).hexdigest()
        if number == len(lines) and not terminated:
            problem = f"line {number} is truncated: the log ends without its newline"
            return AuditVerification(False, k, number, problem)
    count = len(lines)
    if expect_at_least is not None and count < expect_at_least:
        problem = (
            f"the log has {count} entries, fewer than the {expect_at_least} expected: "
            "lines were removed from its end"
        )
        return AuditVerification(False, count, None, problem)
    return AuditVerification(True, count)


_Parsed = tuple[AuditEntry | None, str]


def _diagnose(
    lines: list[bytes], parsed: list[_Parsed], k: int, expected_seq: int, expected_prev: str
) -> tuple[int, str]:
    """Why line ``k`` (0-based) does not follow the good lines before it: (line, problem)."""
    number = k + 1
    entry = parsed[k][0]
    assert entry is not None

    def digest(j: int) -> str:
        return GENESIS if j < 0 else hashlib.sha256(lines[j]).hexdigest()

    def seq(j: int) -> int:
        found = parsed[j][0] if j >= 0 else None
        return found.seq if found is not None else 0

    if k >= 1 and entry.prev == digest(k - 2) and entry.seq == seq(k - 2) + 1:
        # Lines k-1 and k both chain to line k-2; the one no later line chains to is the
        # intruder. At the end of the file there is no later line to tell them apart.
        if k + 1 >= len(lines):
            return number - 1, (
                f"line {number - 1} or line {number} was inserted: both follow line {number - 2}"
            )
        after = parsed[k + 1][0]
        if after is not None and after.prev == digest(k - 1):
            return number, f"line {number} was inserted"
        return number - 1, f"line {number - 1} was inserted"
    if entry.seq < expected_seq:
        for j in range(k):
            if lines[j] == lines[k]:
                return number, f"line {number} was inserted: it repeats line {j + 1}"
        return number, f"line {number} is out of order"
    if entry.seq > expected_seq:
        later = (found for found, _ in parsed[k + 1 :] if found is not None)
        if any(found.seq == expected_seq for found in later):
            return number, f"line {number} is out of order"
        if entry.prev == expected_prev:
            return number, f"line {number} was edited: its seq is {entry.seq}, not {expected_seq}"
        missing = entry.seq - expected_seq
        if missing == 1:
            return number, f"a line before line {number} was deleted"
        return number, f"{missing} lines before line {number} were deleted"
    if k == 0:
        return number, "line 1 was edited: it does not start the chain"
    return number - 1, (
        f"line {number - 1} was edited (line {number} no longer chains to it), or a line "
        f"between them was deleted"
    )


def _parse(raw: bytes) -> _Parsed:
    """The entry on one line, or ``None`` and why not (``"edited"`` for a bad hash)."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "not JSON"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    try:
        entry = AuditEntry.model_validate(obj)
    except ValidationError as exc:
        bad = ", ".join(".".join(map(str, e["loc"])) or "entry" for e in exc.errors())
        return None, f"bad fields: {bad}"
    if canonical_json(obj) != text:
        return None, "edited"
    fields = {key: value for key, value in obj.items() if key != "hash"}
    if _fields_hash(fields) != entry.hash:
        return None, "edited"
    return entry, ""


def _entry_or_raise(raw: bytes, path: Path, number: int | None) -> AuditEntry:
    entry, why = _parse(raw)
    if entry is None:
        where = f"line {number} of {path}" if number is not None else f"a line of {path}"
        problem = "was edited" if why == "edited" else f"is not an audit entry ({why})"
        raise AuditError(f"{where} {problem} (see: fedsilo audit verify)")
    return entry


def _fields_hash(fields: Mapping[str, object]) -> str:
    return hashlib.sha256(canonical_json(dict(fields)).encode("utf-8")).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(value: object, where: str) -> JsonValue:
    """``value`` as plain JSON values; :class:`TypeError` naming ``where`` if it has none."""
    if isinstance(value, Enum):
        return _jsonable(value.value, where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"audit {where} is {value}, which JSON cannot hold")
        return float(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit {where} has a key {key!r}; JSON keys are strings")
            out[key] = _jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"audit {where} is a {type(value).__name__}, which is not JSON; pass str, int, "
        "float, bool, None, a path, an enum, a datetime, or a dict or list of those"
    )


def _create(path: Path) -> None:
    """Create ``path`` (0600) and its missing parent folders (0700) if it does not exist."""
    absolute = path.absolute()
    for folder in reversed(absolute.parents):
        if folder.is_dir():
            continue
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise AuditError(f"cannot create the audit folder {folder}: {exc}") from exc
        os.chmod(folder, 0o700)
    try:
        fd = os.open(absolute, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise AuditError(f"cannot create the audit log {absolute}: {exc}") from exc
    try:
        os.fchmod(fd, 0o600)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(absolute.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AuditError(f"cannot open the audit log {path}: {exc}") from exc


def _read_all(path: Path) -> bytes | None:
    """The file's bytes under a shared lock, or ``None`` if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"cannot open the audit log {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read()
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise AuditError(f"{path} is a folder, not an audit log") from exc
        raise AuditError(f"cannot read the audit log {path}: {exc}") from exc
    finally:
        os.close(fd)


def _split_lines(raw: bytes) -> tuple[list[bytes], bool]:
    """The lines of ``raw`` without newlines, and whether the last one was terminated."""
    if not raw:
        return [], True
    terminated = raw.endswith(b"\n")
    lines = (raw[:-1] if terminated else raw).split(b"\n")
    return lines, terminated


def _last_lines(fd: int, n: int) -> tuple[list[bytes], bool]:
    """The last ``n`` lines of the open file, read backwards from its end in chunks."""
    pos = os.fstat(fd).st_size
    if pos == 0:
        return [], True
    buffer = b""
    while pos > 0 and buffer.count(b"\n") <= n:
        step = min(_CHUNK, pos)
        pos -= step
        buffer = os.pread(fd, step, pos) + buffer
    lines, terminated = _split_lines(buffer)
    if pos > 0:
        lines = lines[1:]  # the first piece may start mid-line
    return lines[-n:], terminated


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
