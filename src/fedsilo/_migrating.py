"""One lock for every database migration this process runs.

Alembic keeps the migration that runs now in module-level proxies (``alembic.op``,
``alembic.context``). Two migrations on two threads of one process would cross their
statements: one database's ``ALTER TABLE`` run on the other's connection. fedsilo runs
two kinds, its orchestrator's schema (:mod:`fedsilo.orchestrator._migrations`) and
MLflow's, which MLflow runs when a store is first opened (:mod:`fedsilo.tracking`), and
the orchestrator opens its MLflow store on a thread of its own. Both hold this lock.
"""

from __future__ import annotations

import threading

__all__ = ["MIGRATIONS"]

MIGRATIONS = threading.RLock()
"""Held while a migration runs; re-entrant, so a migration may run another."""
