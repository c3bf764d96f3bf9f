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
from fedsilo.config import local_cores, open_workspace
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec, SiloStep
from fedsilo.privacy import (
    CentralDP,
    RoundPlan,
    mask_weights,
    round_plan,
    secure_global,
    strategy_for,
)
from fedsilo.privacy.secagg import (
    SecAggClient,
    SecAggServer,
    ServerMessage,
    UnmaskRequest,
    mask_update,
)
from fedsilo.storage import Catalog
from fedsilo.strategies import Strategy, weighted_metrics
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


class _SecureRounds:
    """Secure aggregation in one process: the state machines of the federation, no network.

    Each silo masks its update as its agent would, and the server sums masked vectors
    only, so the simulated model carries the same fixed-point rounding as a real run's.
    """

    def __init__(self, spec: JobSpec, strategy: Strategy, job_id: str) -> None:
        secure = spec.privacy.secure_aggregation
        assert secure is not None
        self.strategy = strategy
        self.weights = mask_weights(strategy, spec.silos)
        self.clip_norm = spec.privacy.central.clip_norm if spec.privacy.central else None
        self.server = SecAggServer(
            spec.silos,
            job_id=job_id,
            rounds=spec.rounds,
            threshold=secure.threshold_for(len(spec.silos)),
            bits=secure.fixed_point_bits,
        )
        self.clients = {
            silo: SecAggClient(
                silo,
                job_id=job_id,
                rounds=spec.rounds,
                threshold=secure.threshold,
                bits=secure.fixed_point_bits,
                clip_range=secure.clip_range,
            )
            for silo in spec.silos
        }
        rosters = [m for c in self.clients.values() for m in self.server.feed(c.advertise())]
        self._relay(rosters)
        self._requests: list[UnmaskRequest] = []
        self._secure = secure
        self._reported: dict[str, float] = {}
        self._plans: dict[int, RoundPlan] = {}

    def _relay(self, messages: list[ServerMessage]) -> None:
        """Hand each server message to its client and each answer back, until quiet."""
        while messages:
            replies = [r for m in messages for r in self.clients[m.recipient].feed(m)]
            messages = [out for r in replies for out in self.server.feed(r)]

    def add(
        self, round_: int, silo: str, params: Parameters, current: Parameters, samples: int
    ) -> None:
        weight = self.weights[silo]
        plan = self._plans.get(round_)
        if plan is None:  # the round's first input: plan it as the orchestrator would
            plan = self._plans[round_] = round_plan(
                self.weights,
                self._reported,
                bits=self._secure.fixed_point_bits,
                clip_range=self._secure.clip_range,
            )
            self.server.plan_round(round_, word_bits=plan.word_bits, weight_scale=plan.weight_scale)
        masked = mask_update(
            self.clients[silo],
            round_,
            params,
            current,
            weight=float(samples) if weight is None else weight,
            clip_norm=self.clip_norm,
            plan=plan.for_silo(silo),
        )
        self._reported[silo] = float(samples)
        self._requests += [m for m in self.server.feed(masked) if isinstance(m, UnmaskRequest)]

    def finish(self, round_: int, current: Parameters) -> dict[str, np.ndarray[Any, Any]]:
        requests, self._requests = self._requests or self.server.close_inputs(round_), []
        self._relay(list(requests))
        result = self.server.finish_round(round_)
        self._plans.pop(round_, None)
        return secure_global(self.strategy, round_, current, result)


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
    silo_seconds = dict.fromkeys(spec.silos, 0.0)
    runners = silo_runners(spec, code_dir, inputs, work_root, threads=threads)

    def timed(silo: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            silo_seconds[silo] += time.perf_counter() - t0

    initial = {silo: timed(silo, runner.prepare) for silo, runner in runners.items()}
    current = initial[spec.silos[0]]
    strategy = strategy_for(spec.strategy, spec.privacy)
    secure = (
        _SecureRounds(spec, strategy, job_id=f"{spec.name}-simulation")
        if spec.privacy.secure_aggregation is not None
        else None
    )
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
        aggregation = strategy.begin_aggregation(round_, current) if secure is None else None
        config = strategy.configure_round(round_, spec.silos)
        train = {}
        for silo, runner in runners.items():
            params, metrics = timed(silo, runner.fit, round_, current, config.get(silo))
            train[silo] = metrics
            samples = int(metrics["num_samples"])
            if secure is not None:
                secure.add(round_, silo, params, current, samples)
            else:
                assert aggregation is not None
                aggregation.add(silo, params, samples)
        if secure is not None:
            current = secure.finish(round_, current)
        else:
            assert aggregation is not None
            current = aggregation.finish()
        central = {}
        if isinstance(strategy, CentralDP):
            central["central_epsilon"] = strategy.epsilon()
        if secure is not None:
            central["secure_aggregation_silos"] = float(len(spec.silos))
    return SimulationResult(
        history=history,
        parameters=dict(current),
        seconds=time.perf_counter() - started,
        silo_seconds=silo_seconds,
    )
