"""A round's metrics as tracking logs them, and a finished FL job tracked from its history.

The orchestrator logs each round as it closes (:mod:`fedsilo.tracking._live`); a
simulation (``fedsilo sim --track``) has its whole history at once, and
:func:`track_history` replays it into the same runs and keys, so both kinds of result
compare in the MLflow UI. :func:`round_entries` is the one mapping from a round to the
logged names, used by both.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsilo.tracking._tracker import TAG_RUNTIME, TAG_SWEEP, JobRun, Tracker

if TYPE_CHECKING:
    from fedsilo.api import RoundInfo
    from fedsilo.jobs import JobSpec
    from fedsilo.pipelines import SimulationResult

__all__ = ["round_entries", "round_metrics", "track_history", "track_simulation"]

# What a silo's training reports about its local DP spend; logged under its own name.
_EPSILON = "epsilon"


def round_metrics(info: RoundInfo) -> dict[str, dict[str, float]]:
    """A round's per-silo metrics: the global model's evaluation, and ``train_*`` from fit.

    Evaluation metrics keep their names (``accuracy``, ``loss``); the silo's own training
    metrics are prefixed ``train_`` so a training loss never overwrites an evaluation one.
    The local DP-SGD spend the silo reports with its training (``epsilon``, over every
    round so far) keeps its name: it is the silo's privacy budget, not a training metric.
    """
    out: dict[str, dict[str, float]] = {}
    for silo, metrics in info.evaluate.items():
        out.setdefault(silo, {}).update(metrics)
    for silo, metrics in info.train.items():
        out.setdefault(silo, {}).update(
            {(k if k == _EPSILON else f"train_{k}"): v for k, v in metrics.items()}
        )
    return out


def round_entries(info: RoundInfo) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """What tracking logs of a round: per silo (:func:`round_metrics`) and aggregated.

    The aggregate is the sample-weighted evaluation over the silos plus the
    federation-wide privacy accounting (``central_epsilon`` under central DP).
    """
    return round_metrics(info), {**info.evaluate_aggregate, **info.privacy}


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
    tags: Mapping[str, str] | None = None,
    submitter: str | None = None,
    readers: Sequence[str] = (),
) -> JobRun:
    """Log a whole job: params, every round, the final model if given; then finish it.

    ``epsilon``, when given, holds each round's privacy budget spent per silo, aligned
    with ``history``; ``tags`` are added to the parent run; ``submitter`` and ``readers``
    make it its owner's (see :meth:`Tracker.start_job`). Returns the job's run handle
    (its ``run_id`` names the parent run).
    """
    run = tracker.start_job(
        job_id, job_name, params, submitter=submitter, readers=readers, tags=tags
    )
    try:
        for i, info in enumerate(history):
            spent = epsilon[i] if epsilon is not None and i < len(epsilon) else None
            per_silo, aggregate = round_entries(info)
            tracker.log_round(run, info.round, per_silo, aggregate, spent)
        if model_path is not None:
            tracker.log_model(run, model_path)
    except BaseException:
        tracker.finish(run, "failed")
        raise
    tracker.finish(run, state)
    return run


def track_simulation(
    tracker: Tracker,
    spec: JobSpec,
    result: SimulationResult,
    *,
    sweep: str | None = None,
) -> JobRun:
    """Log an in-process simulation (``fedsilo sim --track``) as a job of its own.

    Its job id is ``NAME-sim-`` plus 8 hex digits, its tag ``fedsilo.runtime`` is
    ``simulation``, and its final global model is stored like a federation's. A sweep's
    variant passes ``sweep`` (``KEY=VALUE``), kept as the tag ``fedsilo.sweep``.
    """
    from fedsilo.tensors import save_parameters

    job_id = f"{spec.name}-sim-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="fedsilo-track-") as tmp:
        model = Path(tmp) / "model.safetensors"
        save_parameters(result.parameters, model)
        return track_history(
            tracker,
            job_id,
            spec.name,
            spec.model_dump(mode="json"),
            result.history,
            model,
            tags={TAG_RUNTIME: "simulation", **({TAG_SWEEP: sweep} if sweep else {})},
        )
