"""The one place fedsilo imports MLflow: lazily, without telemetry and without warnings.

MLflow takes a second or more to import and sends usage telemetry unless told not to, so
``fedsilo.tracking`` imports it only when a tracker first talks to a store, with
``MLFLOW_DISABLE_TELEMETRY=true`` set in the process first. MLflow's SQLAlchemy store
configures its ORM mappers at import time, and SQLAlchemy 2.1 warns there that MLflow
uses the deprecated ``noload`` loader strategy; that one warning (MLflow's to fix, not
ours) is silenced where the module is imported, so ``filterwarnings = error`` still
catches every other. MLflow's note on stderr that it creates a new store's tables is
turned down to warnings only: a command's output stays what fedsilo prints.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import TYPE_CHECKING

from fedsilo._migrating import MIGRATIONS
from fedsilo.errors import FedsiloError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["TrackingError", "disable_telemetry", "mlflow_client", "wrap_mlflow_errors"]

_import_lock = threading.Lock()
_imported = False

# SQLAlchemy >= 2.1 deprecates the ``noload`` strategy that MLflow's ORM models still use.
_NOLOAD_WARNING = r"The ``noload`` loader strategy is deprecated"


def disable_telemetry(env: dict[str, str] | None = None) -> dict[str, str]:
    """Turn off MLflow's usage telemetry in ``env``, or in this process when ``env`` is None.

    Returns the environment changed (a copy of ``os.environ`` when ``env`` is None), ready
    to hand to a child process such as ``mlflow server``.
    """
    if env is None:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        return dict(os.environ)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _import_stores() -> None:
    """Import MLflow's client and SQL store once, with the known warning silenced."""
    global _imported
    with _import_lock:
        if _imported:
            return
        disable_telemetry()
        with warnings.catch_warnings():
            from sqlalchemy.exc import SADeprecationWarning

            warnings.filterwarnings(
                "ignore", message=_NOLOAD_WARNING, category=SADeprecationWarning
            )
            import mlflow.store.tracking.sqlalchemy_store
            import mlflow.tracking  # noqa: F401
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        _imported = True


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` bound to ``tracking_uri``: no global (fluent) MLflow state.

    Opening a store may migrate its schema, under :data:`~fedsilo._migrating.MIGRATIONS`.
    """
    _import_stores()
    from mlflow.tracking import MlflowClient

    with MIGRATIONS:
        return MlflowClient(tracking_uri=tracking_uri)


def wrap_mlflow_errors(what: str, exc: Exception) -> Exception:
    """The fedsilo error for an MLflow failure while doing ``what``.

    MLflow's own exceptions enter fedsilo here and leave as :class:`TrackingError`.
    """
    return TrackingError(f"{what}: {exc}")


class TrackingError(FedsiloError):
    """The experiment-tracking store could not be written or read."""
