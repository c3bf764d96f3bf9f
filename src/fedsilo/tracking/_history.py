"""Track a finished FL job from its history: what ``fedsilo sim --track`` records.

The orchestrator logs each round as it ends; a simulation (or a job read back from the
orchestrator) has its whole history at once, and :func:`track_history` replays it into
the same runs and keys, so both kinds of result compare in the MLflow UI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsilo.tracking._tracker import JobRun, Tracker

if TYPE_CHECKING:
    from fedsilo.api import RoundInfo

__all__ = ["round_metrics", "track_history"]


def round_metrics(info: RoundInfo) -> dict[str, dict[str, float]]:
    """A round's per-silo metrics: the global model's evaluation, and ``train_*`` from fit.

    Evaluation metrics keep their names (``accuracy``, ``loss``); the silo's own training
    metrics are prefixed ``train_`` so a training loss never overwrites an evaluation one.
    """
    out: dict[str, dict[str, float]] = {}
    for silo, metrics in info.evaluate.items():
        out.setdefault(silo, {}).update(metrics)
    for silo, metrics in info.train.items():
        out.setdefault(silo, {}).update({f"train_{k}": v for k, v in metrics.items()})
    return out


def track_history(
    tracker: Tracker,
    job_id: str,
    job_name: str,
    params: Mapping[str, Any],
    history: Sequence[RoundInfo],
    model_path: Path | None = None,
    *,
    state: str = "succeeded",
    epsilon: Sequence[Mapping[str, float] | None] | None = None,
) -> JobRun:
    """Log a whole job: params, every round, the final model if given; then finish it.

    ``epsilon``, when given, holds each round's privacy budget spent per silo, aligned
    with ``history``. Returns the job's run handle (its ``run_id`` names the parent run).
    """
    run = tracker.start_job(job_id, job_name, params)
    try:
        for i, info in enumerate(history):
            spent = epsilon[i] if epsilon is not None and i < len(epsilon) else None
            tracker.log_round(run, info.round, round_metrics(info), info.evaluate_aggregate, spent)
        if model_path is not None:
            tracker.log_model(run, model_path)
    except BaseException:
        tracker.finish(run, "failed")
        raise
    tracker.finish(run, state)
    return run
