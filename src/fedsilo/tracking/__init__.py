"""Experiment tracking of FL jobs in MLflow, embedded in the workspace by default.

``Tracker.for_workspace(root)`` logs to ``root/tracking/mlflow.db`` (artifacts in
``root/tracking/artifacts``); ``fedsilo tracking ui`` serves it. The orchestrator tracks
each job while it runs through :class:`LiveTracking`, in its owner's experiment;
:func:`export_runs` copies the runs one submitter may read into a store of its own.
MLflow itself is imported only when a tracker first touches its store, so importing this
package is cheap.
"""

from fedsilo.tracking._export import ExportResult, export_runs
from fedsilo.tracking._history import (
    round_entries,
    round_metrics,
    track_history,
    track_simulation,
)
from fedsilo.tracking._live import FEDERATION, LiveTracking, RoundRecord
from fedsilo.tracking._mlflow import TrackingError
from fedsilo.tracking._server import UiCommand, ui_command
from fedsilo.tracking._tracker import JobRun, TrackedJob, Tracker, store_in, workspace_store

__all__ = [
    "FEDERATION",
    "ExportResult",
    "JobRun",
    "LiveTracking",
    "RoundRecord",
    "TrackedJob",
    "Tracker",
    "TrackingError",
    "UiCommand",
    "export_runs",
    "round_entries",
    "round_metrics",
    "store_in",
    "track_history",
    "track_simulation",
    "ui_command",
    "workspace_store",
]
