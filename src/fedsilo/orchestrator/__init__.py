"""The orchestrator: REST API over mutual TLS, scheduling, aggregation, persistence.

``Orchestrator``, ``build`` and ``serve`` load the server (FastAPI, SQLAlchemy, the
strategies) when first used, so that importing one of the package's modules (the CLI's
database commands read its schema revisions) does not load the whole orchestrator. Mutual
TLS and the strict JSON of its routes are :mod:`fedsilo.transport`, shared with each
silo's approval endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsilo.orchestrator._core import Orchestrator
    from fedsilo.orchestrator._server import build, serve

__all__ = ["Orchestrator", "build", "serve"]


def __getattr__(name: str) -> Any:
    if name == "Orchestrator":
        from fedsilo.orchestrator._core import Orchestrator

        return Orchestrator
    if name in ("build", "serve"):
        from fedsilo.orchestrator import _server

        return getattr(_server, name)
    raise AttributeError(f"module 'fedsilo.orchestrator' has no attribute {name!r}")
