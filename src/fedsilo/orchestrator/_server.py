"""Running the orchestrator: its kit, its storage, uvicorn with mutual TLS."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import uvicorn

from fedsilo.audit import AuditLog, audit_path
from fedsilo.config import Kit, Role, load_kit
from fedsilo.errors import ConfigError
from fedsilo.orchestrator._app import create_app
from fedsilo.orchestrator._blobs import BlobStore
from fedsilo.orchestrator._core import Orchestrator
from fedsilo.orchestrator._db import Store, redacted
from fedsilo.orchestrator._members import Roster
from fedsilo.tracking import Tracker
from fedsilo.transport._tls import https_config

__all__ = ["build", "serve"]

log = logging.getLogger("fedsilo.orchestrator")


TRACKING_CLOSE_SECONDS = 60.0
"""How long a stopping orchestrator waits for MLflow tracking to log what it holds."""


def default_database_url(kit: Kit) -> str:
    """SQLite in the orchestrator's storage root."""
    return f"sqlite:///{kit.storage_path / 'orchestrator.db'}"


def build(kit: Kit, *, database_url: str | None = None) -> tuple[Any, Orchestrator]:
    """The ASGI app and its engine for an orchestrator kit (no socket opened)."""
    if kit.role is not Role.ORCHESTRATOR:
        raise ConfigError(
            f"kit '{kit.name}' belongs to a {kit.role}, not the orchestrator", file=str(kit.kit_dir)
        )
    store = Store(database_url or default_database_url(kit))
    log.info("the orchestrator's state: %s database %s", store.dialect, redacted(store.url))
    blobs = BlobStore(kit.storage_path / "blobs")
    audit = AuditLog(audit_path(kit.storage_path), actor=kit.name)
    roster = Roster(
        federation=kit.federation,
        store=store,
        audit=audit,
        ca_file=kit.ca_file,
        founding=kit.participants,
        silos=kit.silos,
    )
    engine = Orchestrator(
        federation=kit.federation,
        silos=roster.silos(),
        store=store,
        blobs=blobs,
        audit=audit,
        tracker=Tracker.in_folder(kit.storage_path / "tracking"),
    )

    def on_startup() -> None:
        engine.track_open()
        resumed, failed = engine.resume_unfinished()
        if resumed:
            log.warning("%d job(s) an earlier orchestrator left running resumed", len(resumed))
        if failed:
            log.warning("%d job(s) an earlier orchestrator left running failed", len(failed))

    async def on_shutdown() -> None:
        # every job that ended is logged before the process exits (fedsilo down waits)
        if not await asyncio.to_thread(engine.track_close, TRACKING_CLOSE_SECONDS):
            log.warning(
                "stopped before MLflow tracking caught up (%.0f s): some runs may be incomplete",
                TRACKING_CLOSE_SECONDS,
            )

    app = create_app(engine, roster, on_startup=on_startup, on_shutdown=on_shutdown)
    return app, engine


def serve(kit_dir: Path, *, database_url: str | None = None, log_level: str = "info") -> None:
    """Serve the orchestrator of ``kit_dir`` until interrupted (SIGINT or SIGTERM)."""
    kit = load_kit(kit_dir)
    app, _engine = build(kit, database_url=database_url)
    config = https_config(
        app,
        host=kit.orchestrator_host,
        port=kit.orchestrator_port,
        cert_file=str(kit.cert_file),
        key_file=str(kit.key_file),
        ca_file=str(kit.ca_file),
        log_level=log_level,
        lifespan="on",
        timeout_keep_alive=60,
    )
    log.info("orchestrator of federation '%s' on %s", kit.federation, kit.orchestrator_url)
    asyncio.run(uvicorn.Server(config).serve())
