"""Hash-chained audit logs: every participant's record of what it did and refused.

Each silo writes ``<silo storage root>/audit/audit.jsonl`` and the orchestrator
``<orchestrator storage root>/audit/audit.jsonl`` (:func:`audit_path`). An
:class:`AuditLog` appends entries that each carry the hash of the line before, so
:func:`verify_log` (``fedsilo audit verify``) names any line edited, deleted, moved or
inserted.
"""

from fedsilo.audit._log import (
    GENESIS,
    AuditEntry,
    AuditError,
    AuditLog,
    AuditVerification,
    audit_path,
    canonical_json,
    read_log,
    verify_log,
)

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
