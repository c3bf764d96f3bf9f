"""A stopping orchestrator completes its MLflow tracking before its process exits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fedsilo.config import open_workspace
from fedsilo.orchestrator import _server
from fedsilo.orchestrator._server import build
from fedsilo.provisioning import provision


def test_the_app_closes_tracking_as_it_shuts_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "fed.yaml"
    spec.write_text(
        "name: t\norchestrator: {host: 127.0.0.1, port: 9443, storage: {root: o}, "
        "compute: {name: o-cpu}}\nsilos:\n  - {name: silo-a, storage: {root: a}, "
        "compute: {name: a-cpu}}\nsubmitters: [alice]\n"
    )
    ws = provision(spec, tmp_path / "ws")
    app, engine = build(open_workspace(ws.root).kit("orchestrator"))
    waits: list[float | None] = []

    def track_close(timeout: float | None = None) -> bool:
        waits.append(timeout)
        return True

    monkeypatch.setattr(engine, "track_close", track_close)

    async def serve_then_stop() -> None:
        async with app.router.lifespan_context(app):  # what uvicorn runs around serving
            assert waits == []  # tracking runs while the orchestrator serves

    asyncio.run(serve_then_stop())
    assert waits == [_server.TRACKING_CLOSE_SECONDS]
