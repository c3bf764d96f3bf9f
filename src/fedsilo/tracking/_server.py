"""``fedsilo tracking ui``: the MLflow UI over a workspace's own tracking store.

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

from fedsilo.errors import WorkspaceError
from fedsilo.tracking._mlflow import disable_telemetry
from fedsilo.tracking._tracker import workspace_store

__all__ = ["UiCommand", "ui_command"]


@dataclass(frozen=True)
class UiCommand:
    """The argv and environment that serve the UI, and the URL it will answer on."""

    argv: list[str]
    env: dict[str, str]
    url: str


def ui_command(
    root: Path, *, host: str = "127.0.0.1", port: int = 5000, workers: int = 1
) -> UiCommand:
    """The ``mlflow server`` command for the tracking store of workspace ``root``.

    The store is created empty when no job was tracked yet, so the UI always starts.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise WorkspaceError(f"the workspace {root} does not exist")
    uri, db, artifacts = workspace_store(root)
    db.parent.mkdir(parents=True, exist_ok=True)
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
