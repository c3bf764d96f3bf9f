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
from fedsilo.api._messages import TaskKind
from fedsilo.config import local_cores, open_workspace
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec, SiloStep
from fedsilo.privacy import strategy_for
from fedsilo.privacy.secagg import SecAggClient, mask_update
from fedsilo.rounds import (
    Answer,
    Finished,
    Metric,
    Phase,
    RoundClosed,
    RoundEngine,
    Task,
)
from fedsilo.storage import Catalog
from fedsilo.strategies import weighted_metrics
from fedsilo.task import SiloRunner, load_task
from fedsilo.tensors import Parameters

__all__ = ["SimulationResult", "simulate", "workspace_inputs", "workspace_threads"]


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


class _LocalSilo:
    """One silo in this process: what its agent and job worker do with each task.

    The in-memory end of the engine's channel: a fit trains from the global model (after
    evaluating it, as a job worker does), a secure fit masks its update with the silo's
    own secure-aggregation party, and a secure-aggregation task feeds that party.
    """

    def __init__(
        self,
        runner: SiloRunner,
        party: SecAggClient | None,
        clip_norm: float | None,
    ) -> None:
        self.runner = runner
        self.party = party
        self.clip_norm = clip_norm
        self.seconds = 0.0

    def handle(self, task: Task, current: Parameters) -> Answer:
        started = time.perf_counter()
        try:
            return self._handle(task, current)
        finally:
            self.seconds += time.perf_counter() - started

    def _handle(self, task: Task, current: Parameters) -> Answer:
        runner, silo = self.runner, self.runner.silo
        if task.kind is TaskKind.EVALUATE:
            return Answer(silo, eval_metrics=runner.evaluate(task.round, current))
        if task.kind is TaskKind.SECAGG:
            assert self.party is not None
            replies = (
                [self.party.advertise()] if task.secagg is None else self.party.feed(task.secagg)
            )
            return Answer(silo, secagg=replies)
        evaluated = runner.evaluate(task.round - 1, current) if task.evaluate_first else None
        params, metrics = runner.fit(task.round, current, task.config)
        samples = int(metrics["num_samples"])
        if self.party is None:
            return Answer(silo, metrics, evaluated, update=params, num_samples=samples)
        masked = mask_update(
            self.party,
            task.round,
            params,
            current,
            weight=float(samples) if task.mask_weight is None else task.mask_weight,
            clip_norm=self.clip_norm,
            plan=task.mask_plan,
        )
        return Answer(silo, metrics, evaluated, num_samples=samples, secagg=[masked])


def _local_silos(
    spec: JobSpec, runners: Mapping[str, SiloRunner], job_id: str
) -> dict[str, _LocalSilo]:
    secure = spec.privacy.secure_aggregation
    central = spec.privacy.central
    return {
        silo: _LocalSilo(
            runner,
            None
            if secure is None
            else SecAggClient(
                silo,
                job_id=job_id,
                rounds=spec.rounds,
                threshold=secure.threshold,
                bits=secure.fixed_point_bits,
                clip_range=secure.clip_range,
            ),
            central.clip_norm if central is not None else None,
        )
        for silo, runner in runners.items()
    }


class _History:
    """The engine's records as :class:`RoundInfo`, each round once its model's evaluation
    is in (with the next round's fits, or the final evaluation)."""

    def __init__(self, on_round: Callable[[RoundInfo], None] | None) -> None:
        self.rounds: list[RoundInfo] = []
        self.on_round = on_round
        self.train: dict[int, dict[str, dict[str, float]]] = {}
        self.privacy: dict[int, dict[str, float]] = {}

    def add(self, metrics: list[Metric]) -> None:
        evaluate: dict[int, dict[str, dict[str, float]]] = {}
        for round_, silo, kind, values in metrics:
            if kind == "train":
                self.train.setdefault(round_, {})[silo] = values
            elif kind == "evaluate":
                evaluate.setdefault(round_, {})[silo] = values
            elif kind == "privacy":
                self.privacy[round_] = values
        for round_, results in sorted(evaluate.items()):
            info = RoundInfo(
                round=round_,
                train=self.train.pop(round_, {}),
                evaluate=results,
                evaluate_aggregate=weighted_metrics(results),
                privacy=self.privacy.pop(round_, {}),
            )
            self.rounds.append(info)
            if self.on_round is not None:
                self.on_round(info)


Threads = int | Mapping[str, int] | None


def sim_threads(spec: JobSpec, silo: str, threads: Threads = None) -> int:
    """The threads ``silo``'s torch runs with in one process: what the job asks for
    (``resources.train.threads``), else ``threads`` (one count, or one per silo), else
    each silo's share of this machine's cores, as ``fedsilo up`` gives them."""
    asked = spec.resources_for(SiloStep.TRAIN).threads
    given = threads.get(silo) if isinstance(threads, Mapping) else threads
    return asked or given or local_cores(len(spec.silos))


def workspace_threads(workspace: Path, spec: JobSpec) -> dict[str, int]:
    """The threads each silo of a local workspace grants the job's train step when it runs
    under ``fedsilo up``: what ``fedsilo sim`` gives each silo to compute alike."""
    from fedsilo.silo._grant import ComputeOffer, Machine, ResourceRefused, grant

    ws = open_workspace(workspace)
    machine = Machine(cores=local_cores(len(ws.silo_names)), memory=1 << 62)
    request = spec.resources_for(SiloStep.TRAIN)
    out: dict[str, int] = {}
    for silo in spec.silos:
        silo_spec = ws.federation.silo(silo)
        compute = silo_spec.compute_of_kind(spec.computes.get(SiloStep.TRAIN))
        if compute is None:
            continue
        try:
            granted = grant(ComputeOffer.of(compute, machine), request, silo=silo, step="train")
        except ResourceRefused:
            continue  # the federation refuses it; the simulation runs it as asked
        out[silo] = granted.threads
    return out


def silo_runners(
    spec: JobSpec,
    code_dir: Path,
    inputs: Mapping[str, Mapping[str, Path]],
    work_root: Path,
    *,
    threads: Threads = None,
) -> dict[str, SiloRunner]:
    """One :class:`SiloRunner` per silo of ``spec``, as its job worker would build it."""
    task = load_task(code_dir, spec.entrypoint)
    return {
        silo: SiloRunner(
            task,
            silo=silo,
            inputs=inputs[silo],
            work_dir=work_root / silo,
            hyperparameters=spec.hyperparameters,
            rounds=spec.rounds,
            privacy=spec.privacy,
            threads=sim_threads(spec, silo, threads),
        )
        for silo in spec.silos
    }


def simulate(
    spec: JobSpec,
    code_dir: Path,
    inputs: Mapping[str, Mapping[str, Path]],
    *,
    work_root: Path,
    on_round: Callable[[RoundInfo], None] | None = None,
    threads: Threads = None,
) -> SimulationResult:
    """Run ``spec`` with every silo in this process; ``inputs[silo][role]`` is a data path.

    Each silo's torch runs on the threads the job asks for, else ``threads``, else the
    silo's share of this machine's cores (:func:`sim_threads`): a federation that grants
    the same count gives the same model bit for bit.
    """
    started = time.perf_counter()
    job_id = f"{spec.name}-simulation"
    runners = silo_runners(spec, code_dir, inputs, work_root, threads=threads)
    silos = _local_silos(spec, runners, job_id)
    initial: dict[str, Parameters] = {}
    for name, silo in silos.items():
        t0 = time.perf_counter()
        initial[name] = silo.runner.prepare()
        silo.seconds += time.perf_counter() - t0
    engine = RoundEngine(spec, strategy_for(spec.strategy, spec.privacy), job_id=job_id)
    engine.start(initial[spec.silos[0]])
    history = _History(on_round)
    while True:
        step = engine.next()
        if isinstance(step, Phase):
            current = engine.current
            assert current is not None
            for task in step.tasks:
                engine.feed(silos[task.silo].handle(task, current))
        elif isinstance(step, RoundClosed):
            history.add(step.metrics)
        elif isinstance(step, Finished):
            history.add(step.metrics)
            break
    assert engine.current is not None
    return SimulationResult(
        history=history.rounds,
        parameters=dict(engine.current),
        seconds=time.perf_counter() - started,
        silo_seconds={name: silo.seconds for name, silo in silos.items()},
    )
