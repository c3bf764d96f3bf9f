"""``fedsilo tracking ui``: the MLflow UI over a workspace's tracking store, or an export.

The UI is MLflow's tracking server (``mlflow server``) started on the workspace's SQLite
store with its artifact folder given explicitly (otherwise MLflow writes into ``./mlruns``
of whatever directory it was started from). It binds to loopback unless told otherwise:
the store holds every silo's metrics, which are only as public as the workspace.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fedsilo._extras import require
from fedsilo.errors import WorkspaceError
from fedsilo.tracking._mlflow import disable_telemetry
from fedsilo.tracking._tracker import store_in, workspace_store

__all__ = ["UiCommand", "ui_command"]


@dataclass(frozen=True)
class UiCommand:
    """The argv and environment that serve the UI, and the URL it will answer on."""

    argv: list[str]
    env: dict[str, str]
    url: str


def ui_command(
    root: Path | None = None,
    *,
    store: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
) -> UiCommand:
    """The ``mlflow server`` command for the tracking store of workspace ``root``, or for
    the store kept in the folder ``store`` (an export, or the orchestrator's
    ``STORAGE/tracking``): give one of them.

    A workspace's store is created empty when no job was tracked yet, so the UI always
    starts; a ``store`` folder must hold one.
    """
    require("flask", purpose="the MLflow UI (mlflow server)")
    if root is not None and store is None:
        root = Path(root).absolute()
        if not root.is_dir():
            raise WorkspaceError(f"the workspace {root} does not exist")
        uri, db, artifacts = workspace_store(root)
        db.parent.mkdir(parents=True, exist_ok=True)
    elif store is not None and root is None:
        uri, db, artifacts = store_in(Path(store).absolute())
        if not db.is_file():
            raise WorkspaceError(f"{store} holds no tracking store (no {db.name} in it)")
    else:
        raise TypeError("ui_command takes a workspace or a store folder: one of them")
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--no-serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    shown = f"[{host}]" if ":" in host else host
    return UiCommand(
        argv=argv, env=disable_telemetry(dict(os.environ)), url=f"http://{shown}:{port}"
    )
