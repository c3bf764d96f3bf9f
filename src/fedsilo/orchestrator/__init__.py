"""The orchestrator: REST API over mutual TLS, scheduling, aggregation, persistence.

``Orchestrator``, ``build`` and ``serve`` load the server (FastAPI, SQLAlchemy, the
strategies) when first used, so that a silo's approval endpoint, which shares only the
TLS layer in :mod:`fedsilo.orchestrator._tls`, does not load the whole orchestrator.
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
