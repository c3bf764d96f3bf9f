"""The orchestrator: REST API over mutual TLS, scheduling, aggregation, persistence."""

from fedsilo.orchestrator._core import Orchestrator
from fedsilo.orchestrator._server import build, serve

__all__ = ["Orchestrator", "build", "serve"]
