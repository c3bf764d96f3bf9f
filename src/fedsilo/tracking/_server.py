"""``fedsilo tracking ui``: the MLflow UI over a workspace's tracking store, or an export.

The UI is MLflow's tracking server (``mlflow server``) started on the workspace's SQLite
store with its artifact folder given explicitly (otherwise MLflow writes into ``./mlruns``
of whatever directory it was started from). It binds to loopback unless told otherwise:
the store holds every silo's metrics, which are only as public as the workspace.

The server runs MLflow's app through fedsilo's (``--app-name fedsilo``, the ``mlflow.app``
entry point of :mod:`fedsilo.tracking._ui_app`), so a browser opens the UI in its model
training view rather than its GenAI view.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from fedsilo._extras import require
from fedsilo.errors import WorkspaceError
from fedsilo.tracking._mlflow import disable_telemetry
from fedsilo.tracking._tracker import store_in, workspace_store

__all__ = ["APP_NAME", "UiCommand", "ui_command"]

APP_NAME = "fedsilo"
"""fedsilo's ``mlflow.app`` entry point: MLflow's server app, opening in training view."""


@dataclass(frozen=True)
class UiCommand:
    """The argv and environment that serve the UI, and the URL it will answer on.

    ``training_view`` is False when this installation of fedsilo does not register its
    MLflow app (an install made before it had one): the UI then opens as MLflow's does.
    """

    argv: list[str]
    env: dict[str, str]
    url: str
    training_view: bool = True


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
    training_view = any(e.name == APP_NAME for e in entry_points(group="mlflow.app"))
    if training_view:
        argv += ["--app-name", APP_NAME]
    shown = f"[{host}]" if ":" in host else host
    return UiCommand(
        argv=argv,
        env=disable_telemetry(dict(os.environ)),
        url=f"http://{shown}:{port}",
        training_view=training_view,
    )
