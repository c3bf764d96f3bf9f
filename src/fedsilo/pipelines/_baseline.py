"""Centralized baselines: the same task trained on one pool of data, for comparison."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedsilo.jobs import Hyperparameters
from fedsilo.task import SiloRunner, TaskModule

__all__ = ["BaselineResult", "train_centralized"]


@dataclass(frozen=True)
class BaselineResult:
    """Evaluation metrics of a centrally trained model and its training time."""

    metrics: dict[str, float]
    seconds: float


def train_centralized(
    task: TaskModule,
    inputs: Mapping[str, Path],
    *,
    hyperparameters: Hyperparameters,
    rounds: int,
    work_dir: Path,
    name: str = "central",
) -> BaselineResult:
    """Train ``task`` on ``inputs`` alone for as many rounds as the FL job, then evaluate.

    Each round runs the task's ``train`` once from the previous round's parameters, so the
    baseline sees the same number of local epochs as each silo does in the FL job.
    """
    started = time.perf_counter()
    runner = SiloRunner(
        task, silo=name, inputs=inputs, work_dir=work_dir, hyperparameters=hyperparameters
    )
    params = runner.prepare()
    for round_ in range(1, rounds + 1):
        params, _ = runner.fit(round_, params)
    metrics = runner.evaluate(rounds, params)
    return BaselineResult(metrics=metrics, seconds=time.perf_counter() - started)
