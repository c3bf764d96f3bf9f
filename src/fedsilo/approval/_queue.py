"""The manual queue: jobs the policy held for a person, and what that person decided.

One SQLite file in the silo's storage (``<storage root>/approval/queue.db``), so a held job
and a person's decision survive a restart of the endpoint. An entry is keyed by its
``request_id`` and found again by job id and the digest of the whole request: the same job
asked again with the same request gets the stored state, while a changed request (other
code, other inputs) is a new request a person has not seen. A decision with an expiry
lapses lazily: once past ``expires_at``, the entry is held again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import uuid
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from fedsilo.approval._models import ApprovalAnswer, ApprovalRequest, Decision

__all__ = ["ApprovalQueue", "QueueEntry", "QueueState", "request_digest"]

POLICY = "policy"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    job_name TEXT NOT NULL,
    author TEXT NOT NULL,
    state TEXT NOT NULL,
    rule TEXT NOT NULL,
    held_reason TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    expires_at REAL,
    request TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_job ON requests (job_id, digest);
"""
_COLUMNS = (
    "request_id, job_id, job_name, author, state, rule, reason, created_at, decided_at, "
    "decided_by, expires_at, request, held_reason"
)


class QueueState(StrEnum):
    """Where a held request stands."""

    HELD = "held"
    APPROVED = "approved"
    REJECTED = "rejected"


_ANSWERS = {
    QueueState.HELD: Decision.MANUAL,
    QueueState.APPROVED: Decision.APPROVE,
    QueueState.REJECTED: Decision.REJECT,
}


class QueueEntry(BaseModel):
    """One request the policy held: its job, state, rule, reason and decision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    job_id: str
    job_name: str
    author: str
    state: QueueState
    rule: str
    reason: str
    created_at: float
    decided_at: float | None = None
    decided_by: str | None = None
    expires_at: float | None = None
    request: ApprovalRequest

    def answer(self) -> ApprovalAnswer:
        """The answer the agent gets for this entry now."""
        return ApprovalAnswer(
            request_id=self.request_id,
            decision=_ANSWERS[self.state],
            rule=self.rule,
            reason=self.reason,
            decided_by=self.decided_by or POLICY,
            expires_at=self.expires_at,
        )


def request_digest(request: ApprovalRequest) -> str:
    """SHA-256 of the request's canonical JSON: what a person's decision is bound to."""
    text = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ApprovalQueue:
    """Held requests in SQLite; safe to share between the threads of one server."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def hold(self, request: ApprovalRequest, *, rule: str, reason: str, now: float) -> QueueEntry:
        """Store ``request`` as held by ``rule``; returns the new entry."""
        request_id = uuid.uuid4().hex
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (request_id, job_id, digest, job_name, author, state, "
                "rule, held_reason, reason, created_at, request) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    request.job_id,
                    request_digest(request),
                    request.job_name,
                    request.author,
                    QueueState.HELD.value,
                    rule,
                    reason,
                    reason,
                    now,
                    request.model_dump_json(),
                ),
            )
        entry = self.get(request_id, now=now)
        assert entry is not None
        return entry

    def find(self, request: ApprovalRequest, *, now: float) -> QueueEntry | None:
        """The latest entry for this very request (same job id, same content), if any."""
        with self._lock:
            self._lapse(now)
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE job_id = ? AND digest = ? "
                "ORDER BY created_at DESC LIMIT 1",
                (request.job_id, request_digest(request)),
            ).fetchone()
        return None if row is None else _entry(row)

    def get(self, request_id: str, *, now: float) -> QueueEntry | None:
        """The entry ``request_id``, or ``None``."""
        with self._lock:
            self._lapse(now)
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else _entry(row)

    def list(self, state: QueueState | None, *, now: float) -> list[QueueEntry]:
        """Entries in ``state`` (every entry for ``None``), oldest first."""
        with self._lock:
            self._lapse(now)
            where, args = ("WHERE state = ?", (state.value,)) if state else ("", ())
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM requests {where} ORDER BY created_at, request_id", args
            ).fetchall()
        return [_entry(row) for row in rows]

    def decide(
        self,
        request_id: str,
        *,
        state: QueueState,
        by: str,
        reason: str,
        expires_at: float | None,
        now: float,
    ) -> QueueEntry | None:
        """Record a person's decision on a held entry; ``None`` if it is not held (or absent)."""
        with self._lock:
            self._lapse(now)
            changed = self._db.execute(
                "UPDATE requests SET state = ?, reason = ?, decided_at = ?, decided_by = ?, "
                "expires_at = ? WHERE request_id = ? AND state = ?",
                (state.value, reason, now, by, expires_at, request_id, QueueState.HELD.value),
            ).rowcount
        return self.get(request_id, now=now) if changed else None

    def _lapse(self, now: float) -> None:
        """Hold again every decision whose expiry has passed (caller holds the lock)."""
        expired = self._db.execute(
            "SELECT request_id, decided_by, state, held_reason FROM requests "
            "WHERE state != ? AND expires_at IS NOT NULL AND expires_at <= ?",
            (QueueState.HELD.value, now),
        ).fetchall()
        for request_id, decided_by, state, held_reason in expired:
            word = "approval" if state == QueueState.APPROVED.value else "rejection"
            reason = f"the {word} by {decided_by} expired; held for a person again ({held_reason})"
            self._db.execute(
                "UPDATE requests SET state = ?, reason = ?, decided_at = NULL, "
                "decided_by = NULL, expires_at = NULL WHERE request_id = ?",
                (QueueState.HELD.value, reason, request_id),
            )


def _entry(row: tuple[object, ...]) -> QueueEntry:
    names = [n.strip() for n in _COLUMNS.split(",")]
    data = dict(zip(names, row, strict=True))
    data.pop("held_reason")
    data["request"] = ApprovalRequest.model_validate_json(str(data["request"]))
    return QueueEntry.model_validate(data)
