"""In-process simulation: the same task module, strategy and seeds, no servers.

``simulate`` runs every silo's side in this process, one after the other, with the code
the job workers use (:class:`fedsilo.task.SiloRunner`) and the strategy the orchestrator
uses, so it gives the model the multi-process federation gives, to float tolerance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.api import RoundInfo
from fedsilo.config import open_workspace
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec
from fedsilo.privacy import CentralDP, strategy_for
from fedsilo.storage import Catalog
from fedsilo.strategies import weighted_metrics
from fedsilo.task import SiloRunner, load_task

__all__ = ["SimulationResult", "simulate", "workspace_inputs"]


@dataclass(frozen=True)
class SimulationResult:
    """Per-round metrics, the final global parameters and the wall-clock time."""

    history: list[RoundInfo]
    parameters: dict[str, np.ndarray[Any, Any]]
    seconds: float
    silo_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def final_metrics(self) -> dict[str, float]:
        """The sample-weighted evaluation of the final model over all silos."""
        return dict(self.history[-1].evaluate_aggregate) if self.history else {}


def workspace_inputs(workspace: Path, spec: JobSpec) -> dict[str, dict[str, Path]]:
    """Each silo's input paths for ``spec``, looked up in the silos' catalogs.

    For local development only: a real silo's data is never readable from elsewhere.
    """
    ws = open_workspace(workspace)
    out: dict[str, dict[str, Path]] = {}
    for silo in spec.silos:
        if silo not in ws.silo_names:
            raise ConfigError(
                f"the job names silo '{silo}', which workspace {ws.root} does not have "
                f"(silos: {', '.join(ws.silo_names)})",
                field="silos",
            )
        with Catalog(ws.kit(silo).storage_path, silo=silo) as catalog:
            out[silo] = {
                role: catalog.path_of(name) for role, name in spec.inputs_for(silo).items()
            }
    return out


def simulate(
    spec: JobSpec,
    code_dir: Path,
    inputs: Mapping[str, Mapping[str, Path]],
    *,
    work_root: Path,
    on_round: Callable[[RoundInfo], None] | None = None,
) -> SimulationResult:
    """Run ``spec`` with every silo in this process; ``inputs[silo][role]`` is a data path."""
    started = time.perf_counter()
    task = load_task(code_dir, spec.entrypoint)
    silo_seconds = dict.fromkeys(spec.silos, 0.0)
    runners = {
        silo: SiloRunner(
            task,
            silo=silo,
            inputs=inputs[silo],
            work_dir=work_root / silo,
            hyperparameters=spec.hyperparameters,
            rounds=spec.rounds,
            privacy=spec.privacy,
        )
        for silo in spec.silos
    }

    def timed(silo: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            silo_seconds[silo] += time.perf_counter() - t0

    initial = {silo: timed(silo, runner.prepare) for silo, runner in runners.items()}
    current = initial[spec.silos[0]]
    strategy = strategy_for(spec.strategy, spec.privacy)
    history: list[RoundInfo] = []
    train: dict[str, dict[str, float]] = {}
    central: dict[str, float] = {}
    for round_ in range(1, spec.rounds + 2):
        evaluate: dict[str, dict[str, float]] = {}
        if round_ > 1:
            for silo, runner in runners.items():
                evaluate[silo] = timed(silo, runner.evaluate, round_ - 1, current)
            info = RoundInfo(
                round=round_ - 1,
                train=train,
                evaluate=evaluate,
                evaluate_aggregate=weighted_metrics(evaluate),
                privacy=central,
            )
            history.append(info)
            if on_round is not None:
                on_round(info)
        if round_ > spec.rounds:
            break
        aggregation = strategy.begin_aggregation(round_, current)
        config = strategy.configure_round(round_, spec.silos)
        train = {}
        for silo, runner in runners.items():
            params, metrics = timed(silo, runner.fit, round_, current, config.get(silo))
            train[silo] = metrics
            aggregation.add(silo, params, int(metrics["num_samples"]))
        current = aggregation.finish()
        if isinstance(strategy, CentralDP):
            central = {"central_epsilon": strategy.epsilon()}
    return SimulationResult(
        history=history,
        parameters=dict(current),
        seconds=time.perf_counter() - started,
        silo_seconds=silo_seconds,
    )
