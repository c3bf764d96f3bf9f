"""The round engine: an FL job's rounds as a state machine that performs no I/O.

A driver asks the engine what comes next (:meth:`RoundEngine.next`) and gets one of:

- a :class:`Phase`: tasks to give silos (fit, evaluate, secure-aggregation exchanges) and
  how to wait for them. The driver sends them its own way (HTTP to agents, or calls into
  this process) and feeds back one :class:`Answer` or :class:`Missed` per task, in any
  order (:meth:`RoundEngine.feed`); then it asks again;
- a :class:`RoundClosed`: a round's new global parameters and its record, to keep;
- :class:`Finished`: the job's end, with the final evaluation's record.

The engine decides which silos get which task, folds updates in the job's silo order (so
the model does not depend on which silo answered first), closes rounds with the
strategy, applies central DP, drives the secure-aggregation server, enforces the job's
quorum, and names every silo that took no part. Its state between rounds is data
(:meth:`RoundEngine.state`, :meth:`RoundEngine.resume`). The orchestrator drives it over
HTTP and ``fedsilo sim`` in one process, so both compute the same model.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.api._messages import TaskKind
from fedsilo.errors import JobFailed
from fedsilo.jobs import JobSpec
from fedsilo.privacy import CentralDP, MaskPlan, mask_weights, round_plan, secure_global
from fedsilo.privacy.secagg import (
    AdvertiseKeys,
    AggregateResult,
    KeyRoster,
    MaskedInput,
    MaskedVector,
    SecAggAborted,
    SecAggProtocolError,
    SecAggServer,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsilo.strategies import Aggregation, Strategy
from fedsilo.tensors import Parameters

__all__ = [
    "CENTRAL",
    "Answer",
    "Finished",
    "Left",
    "Metric",
    "Missed",
    "Phase",
    "RoundClosed",
    "RoundEngine",
    "SetupDone",
    "Task",
]

Arrays = dict[str, npt.NDArray[np.generic]]
# (round, silo, kind, values): kind is train, evaluate or privacy
Metric = tuple[int, str, str, dict[str, float]]
CENTRAL = "*"  # the silo column of metrics that belong to the whole federation

ClientMessage = AdvertiseKeys | ShareBundle | MaskedInput | MaskedVector | UnmaskResponse
ServerMessage = KeyRoster | ShareDelivery | UnmaskRequest


# -- what the engine asks for, and what it is told ---------------------------------------------


@dataclass(frozen=True)
class Task:
    """One task for one silo. ``secagg`` is the server's message to relay (``None`` in
    the key exchange: the silo advertises its keys); ``mask_weight`` and ``mask_plan`` are
    a secure round's encoding of the silo's masked update."""

    silo: str
    kind: TaskKind
    round: int
    config: Mapping[str, float] = field(default_factory=dict)
    evaluate_first: bool = False
    secagg: ServerMessage | None = None
    mask_weight: float | None = None
    mask_plan: MaskPlan | None = None


@dataclass(frozen=True)
class Phase:
    """Tasks to send together, and how to wait for them.

    ``tolerate``: a silo's failure is fed back as :class:`Missed` and the phase goes on
    (otherwise the driver fails the job on it). ``timeout``: seconds a silo may take.
    ``reconnect``: a silo whose agent disconnected is waited for to come back.
    """

    name: str
    kind: TaskKind
    round: int
    tasks: tuple[Task, ...]
    tolerate: bool = False
    timeout: float | None = None
    reconnect: bool = True

    @property
    def silos(self) -> list[str]:
        return [task.silo for task in self.tasks]


@dataclass(frozen=True)
class Answer:
    """A silo's answer to its task of the current phase.

    ``update`` is a plain fit's parameters (in memory, or a safetensors file the
    aggregation reads tensor by tensor); ``secagg`` the silo's secure-aggregation
    messages (a secure fit's masked update among them).
    """

    silo: str
    train_metrics: Mapping[str, float] | None = None
    eval_metrics: Mapping[str, float] | None = None
    update: Parameters | Path | None = None
    num_samples: int = 0
    secagg: Sequence[ClientMessage] = ()


@dataclass(frozen=True)
class Missed:
    """A silo took no part in its task of the current phase, and why."""

    silo: str
    why: str


@dataclass(frozen=True)
class Left:
    """What :meth:`RoundEngine.feed` reports: ``silo`` took no part in ``phase``.

    ``for_good``: it was dropped from secure aggregation and gets no further task.
    """

    silo: str
    phase: str
    round: int
    why: str
    for_good: bool = False


@dataclass(frozen=True)
class RoundClosed:
    """A round is over: its new global parameters and what it recorded.

    ``metrics`` are those gathered since the previous round closed (each silo's training
    metrics of this round, its evaluation of the previous global model, the round's
    privacy line). ``missed`` names the silos that took no part, and why.
    """

    round: int
    parameters: Arrays
    metrics: list[Metric]
    missed: dict[str, str]
    privacy: dict[str, float]


@dataclass(frozen=True)
class SetupDone:
    """Secure aggregation is set up: its ``members`` go on, ``threshold`` must stay."""

    members: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Finished:
    """The job is over: the final evaluation's metrics and the silos that missed it."""

    metrics: list[Metric]
    missed: dict[str, str]


class Stage(enum.Enum):
    """Where the engine is: what :meth:`RoundEngine.next` does when called."""

    KEYS = "keys"  # secure aggregation: ask every silo for its keys
    SHARES = "shares"  # relay the key rosters, collect encrypted shares
    DELIVERY = "delivery"  # deliver the shares
    READY = "ready"  # check the members left against the threshold
    FIT = "fit"  # open the next round, or the final evaluation after the last
    UNMASK = "unmask"  # secure aggregation: ask the survivors to unmask the round's sum
    CLOSE = "close"  # aggregate the round
    EVALUATE = "evaluate"  # evaluate the final model everywhere
    DONE = "done"  # report the end
    OVER = "over"


@dataclass
class EngineState:
    """An engine's state between rounds, as data: what resuming a job needs besides the
    global model and the strategy's own state (:meth:`as_dict` is JSON-ready)."""

    round: int
    stage: str
    reported: dict[str, float]
    active: list[str]
    dropped: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineState:
        """Read back :meth:`as_dict`; a ``ValueError`` says what does not read."""
        try:
            return cls(
                round=int(data["round"]),
                stage=str(data["stage"]),
                reported={str(k): float(v) for k, v in dict(data["reported"]).items()},
                active=[str(s) for s in data["active"]],
                dropped={str(k): str(v) for k, v in dict(data["dropped"]).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the round engine's saved state does not read ({exc!r})") from None


# -- the engine ---------------------------------------------------------------------------------


class RoundEngine:
    """One job's rounds. ``strategy`` is the job's (central DP wrapped in), built by the
    caller so it can restore a saved state into it first."""

    def __init__(self, spec: JobSpec, strategy: Strategy, *, job_id: str) -> None:
        self.spec = spec
        self.strategy = strategy
        self.job_id = job_id
        self.silos = tuple(spec.silos)
        self.secure = spec.privacy.secure_aggregation
        self.round = 0  # the last round closed
        self.current: Parameters | None = None
        self.active: list[str] = list(self.silos)  # under secure aggregation, the members
        self.dropped: dict[str, str] = {}
        self.reported: dict[str, float] = {}  # each silo's latest num_samples
        self._stage = Stage.FIT
        self._metrics: list[Metric] = []
        self._missed: dict[str, str] = {}
        self._pending: set[str] = set()
        self._phase: Phase | None = None
        self._aggregation: Aggregation | None = None
        self._arrived: dict[str, tuple[Parameters | Path, int] | None] = {}
        self._order: list[str] = []
        self._relay: list[ServerMessage] = []
        self._server: SecAggServer | None = None
        if self.secure is not None:
            mask_weights(strategy, self.silos)  # refuses a strategy that needs each update
            self._server = SecAggServer(
                self.silos,
                job_id=job_id,
                rounds=spec.rounds,
                threshold=self.secure.threshold_for(len(self.silos)),
                bits=self.secure.fixed_point_bits,
            )

    # -- starting and resuming ------------------------------------------------------------

    def start(self, initial: Parameters) -> None:
        """Begin with ``initial`` as the global model of round 0."""
        self.current = initial
        self._stage = Stage.KEYS if self._server is not None else Stage.FIT

    def resume(self, current: Parameters, round_: int, state: EngineState | None = None) -> None:
        """Go on after ``round_`` closed with ``current`` as its global model.

        The strategy's own state is restored by the caller before the engine is built.
        Under secure aggregation the silos still in the job set it up again, with new
        keys: the round that was in flight is redone under new masks, and each silo
        refuses to send an update for a round whose sum it already helped unmask, so no
        two sums of one round can be compared.
        """
        self.current = current
        self.round = round_
        if state is not None:
            self.reported = dict(state.reported)
            self.active = [s for s in self.silos if s in state.active]
            self.dropped = dict(state.dropped)
        self._stage = Stage.FIT
        if self._server is None or round_ >= self.spec.rounds:
            return  # only the final evaluation is left: it needs no masks
        secure, threshold = self.secure, self._server.threshold
        assert secure is not None
        if len(self.active) < threshold:
            dropped = "; ".join(f"{silo}: {why}" for silo, why in self.dropped.items())
            raise JobFailed(
                f"only {len(self.active)} silos are left in secure aggregation, fewer than "
                f"its threshold of {threshold} (dropped: {dropped})"
            )
        self._server = SecAggServer(
            self.active,
            job_id=self.job_id,
            rounds=self.spec.rounds,
            threshold=threshold,
            bits=secure.fixed_point_bits,
        )
        self._stage = Stage.KEYS

    def state(self) -> EngineState:
        """What :meth:`resume` takes back besides the model and the strategy."""
        return EngineState(
            round=self.round,
            stage=self._stage.value,
            reported=dict(self.reported),
            active=list(self.active),
            dropped=dict(self.dropped),
        )

    @property
    def tolerant(self) -> bool:
        """Whether a round may close without some silos (``min_silos`` below their count)."""
        return self.spec.quorum < len(self.silos)

    # -- the driver's two calls -----------------------------------------------------------

    def next(self) -> Phase | SetupDone | RoundClosed | Finished:
        """What the driver does next; call once the current phase's tasks are all fed."""
        if self._pending:
            raise RuntimeError(f"silos {sorted(self._pending)} have not answered the phase")
        stage, server = self._stage, self._server
        if stage is Stage.FIT:
            if self.round < self.spec.rounds:
                return self._fit(self.round + 1)
            stage = Stage.EVALUATE
        if stage is Stage.CLOSE:
            return self._close(self.round + 1)
        if stage is Stage.EVALUATE:
            return self._evaluate()
        if stage is Stage.DONE:
            self._stage = Stage.OVER
            metrics, self._metrics = self._metrics, []
            return Finished(metrics, dict(self._missed))
        if stage is Stage.OVER:
            raise RuntimeError("the job is over")
        assert server is not None
        if stage is Stage.KEYS:
            return self._exchange("keys", 0, Stage.SHARES, dict.fromkeys(self.active))
        if stage is Stage.SHARES:
            rosters = self._take_relay() or self._secure(server.close_keys)
            return self._exchange("shares", 0, Stage.DELIVERY, self._addressed(rosters))
        if stage is Stage.DELIVERY:
            deliveries = self._take_relay() or self._secure(server.close_sharing)
            for silo in [s for s in self.active if s not in server.members]:
                self._drop(silo, "did not finish setting up secure aggregation", "setup")
            return self._exchange("delivery", 0, Stage.READY, self._addressed(deliveries))
        if stage is Stage.READY:
            if len(self.active) < server.threshold:
                self._secure(self._abort_setup)
            self._stage = Stage.FIT
            return SetupDone(tuple(self.active), server.threshold)
        if stage is Stage.UNMASK:
            round_ = self.round + 1
            requests = self._take_relay() or self._secure(lambda: server.close_inputs(round_))
            return self._exchange(
                f"round {round_} unmasking", round_, Stage.CLOSE, self._addressed(requests)
            )
        raise AssertionError(stage)

    def feed(self, event: Answer | Missed) -> list[Left]:
        """Take one silo's answer to the current phase (or that it missed it).

        Returns who left the phase, for the driver's records. Raises :class:`JobFailed`
        when too few silos are left.
        """
        phase = self._phase
        if phase is None or event.silo not in self._pending:
            raise RuntimeError(f"no task of silo '{event.silo}' is open")
        self._pending.discard(event.silo)
        if isinstance(event, Missed):
            return self._left(phase, event.silo, event.why)
        if phase.kind is TaskKind.FIT:
            return self._fitted(phase, event)
        self._record(phase.round, event)
        if phase.kind is TaskKind.SECAGG:
            return self._relayed(phase, event.silo, event.secagg)
        return []

    # -- phases -----------------------------------------------------------------------------

    def _exchange(
        self,
        name: str,
        round_: int,
        then: Stage,
        payloads: Mapping[str, ServerMessage | None],
    ) -> Phase:
        """A secure-aggregation exchange with the active silos named in ``payloads``."""
        assert self.secure is not None
        if round_ == 0:
            name = f"secure aggregation setup ({name})"
        tasks = tuple(
            Task(silo=silo, kind=TaskKind.SECAGG, round=round_, secagg=message)
            for silo, message in payloads.items()
            if silo in self.active
        )
        self._stage = then
        return self._secure_phase(name, TaskKind.SECAGG, round_, tasks)

    def _secure_phase(
        self, name: str, kind: TaskKind, round_: int, tasks: tuple[Task, ...]
    ) -> Phase:
        """A phase of a secure job: a silo that fails or is silent past the secure
        aggregation's timeout is dropped, and is not waited for to reconnect."""
        assert self.secure is not None
        phase = Phase(
            name,
            kind,
            round_,
            tasks,
            tolerate=True,
            timeout=self.secure.timeout_seconds,
            reconnect=False,
        )
        return self._begin(phase)

    def _begin(self, phase: Phase) -> Phase:
        self._phase = phase
        self._pending = set(phase.silos)
        return phase

    def _addressed(self, messages: Sequence[ServerMessage]) -> dict[str, ServerMessage]:
        return {m.recipient: m for m in messages if m.recipient in self.active}

    def _take_relay(self) -> list[ServerMessage]:
        relay, self._relay = self._relay, []
        return relay

    def _secure(self, step: Callable[[], Any]) -> Any:
        """Run one step of the secure-aggregation server; an abort fails the job."""
        try:
            return step()
        except SecAggAborted as exc:
            dropped = "; ".join(f"{silo}: {why}" for silo, why in self.dropped.items())
            raise JobFailed(f"{exc}" + (f" (dropped: {dropped})" if dropped else "")) from exc

    def _abort_setup(self) -> None:
        assert self._server is not None
        raise SecAggAborted(
            stage="share delivery",
            arrived=len(self.active),
            threshold=self._server.threshold,
            round=None,
        )

    @property
    def threshold(self) -> int | None:
        """Secure aggregation's threshold (``None`` without it)."""
        return None if self._server is None else self._server.threshold

    def _fit(self, round_: int) -> Phase:
        assert self.current is not None
        self._missed = {}
        self._arrived = {}
        offered = list(self.active)
        config = self.strategy.configure_round(round_, offered)
        name = f"round {round_}"
        if self._server is None:
            self._aggregation = self.strategy.begin_aggregation(round_, self.current)
            self._order = list(self.silos)
            tasks = tuple(
                Task(s, TaskKind.FIT, round_, config.get(s, {}), evaluate_first=round_ > 1)
                for s in offered
            )
            self._stage = Stage.CLOSE
            phase = Phase(
                name,
                TaskKind.FIT,
                round_,
                tasks,
                tolerate=self.tolerant,
                timeout=self.spec.round_timeout,
            )
            return self._begin(phase)
        assert self.secure is not None
        weights = mask_weights(self.strategy, offered)
        plan = round_plan(
            weights,
            self.reported,
            bits=self.secure.fixed_point_bits,
            clip_range=self.secure.clip_range,
        )
        self._server.plan_round(round_, word_bits=plan.word_bits, weight_scale=plan.weight_scale)
        tasks = tuple(
            Task(
                s,
                TaskKind.FIT,
                round_,
                config.get(s, {}),
                evaluate_first=round_ > 1,
                mask_weight=weights[s],
                mask_plan=plan.for_silo(s),
            )
            for s in offered
        )
        self._stage = Stage.UNMASK
        return self._secure_phase(name, TaskKind.FIT, round_, tasks)

    def _evaluate(self) -> Phase:
        self._missed = {}
        round_ = self.spec.rounds
        tasks = tuple(Task(s, TaskKind.EVALUATE, round_) for s in self.active)
        secure = self._server is not None
        phase = Phase(
            "the final evaluation",
            TaskKind.EVALUATE,
            round_,
            tasks,
            tolerate=self.tolerant and not secure,
            timeout=self.spec.round_timeout,
            reconnect=not secure,
        )
        self._stage = Stage.DONE
        return self._begin(phase)

    def _close(self, round_: int) -> RoundClosed:
        assert self.current is not None
        privacy: dict[str, float] = {}
        server = self._server
        if server is not None:
            result: AggregateResult = self._secure(lambda: server.finish_round(round_))
            params = secure_global(self.strategy, round_, self.current, result)
            privacy["secure_aggregation_silos"] = float(len(result.survivors))
            privacy["secure_aggregation_dropped"] = float(len(result.dropped))
        else:
            assert self._aggregation is not None and not self._order
            params = self._aggregation.finish()
            self._aggregation = None
        return self._closed(round_, params, privacy)

    def _closed(self, round_: int, params: Arrays, privacy: dict[str, float]) -> RoundClosed:
        if isinstance(self.strategy, CentralDP):
            privacy["central_epsilon"] = self.strategy.epsilon()
        if privacy:
            self._metrics.append((round_, CENTRAL, "privacy", privacy))
        metrics, self._metrics = self._metrics, []
        self.current = params
        self.round = round_
        self._stage = Stage.FIT
        return RoundClosed(round_, params, metrics, dict(self._missed), privacy)

    # -- answers ----------------------------------------------------------------------------

    def _record(self, round_: int, answer: Answer) -> None:
        if answer.train_metrics is not None:
            self._metrics.append((round_, answer.silo, "train", dict(answer.train_metrics)))
        if answer.eval_metrics is not None:
            eval_round = round_ - 1 if answer.train_metrics is not None else round_
            self._metrics.append((eval_round, answer.silo, "evaluate", dict(answer.eval_metrics)))

    def _fitted(self, phase: Phase, answer: Answer) -> list[Left]:
        self._record(phase.round, answer)
        if self._server is not None:
            self.reported[answer.silo] = float(answer.num_samples)
            return self._relayed(phase, answer.silo, answer.secagg)
        if answer.update is None:
            raise RuntimeError(f"silo '{answer.silo}' answered a fit without an update")
        self._arrived[answer.silo] = (answer.update, answer.num_samples)
        self._fold()
        return []

    def _fold(self) -> None:
        """Fold every update whose silos before it in the job's order are in."""
        assert self._aggregation is not None
        while self._order and self._order[0] in self._arrived:
            silo = self._order.pop(0)
            update = self._arrived.pop(silo)
            if update is not None:
                self._aggregation.add(silo, *update)

    def _relayed(self, phase: Phase, silo: str, messages: Sequence[ClientMessage]) -> list[Left]:
        """Feed a silo's secure-aggregation messages to the server; keep what it relays."""
        server = self._server
        assert server is not None
        relay: list[ServerMessage] = []
        try:
            for message in messages:
                if message.sender != silo:
                    raise SecAggProtocolError(f"silo '{silo}' sent a message as '{message.sender}'")
                relay += self._secure(functools.partial(server.feed, message))
        except SecAggProtocolError as exc:
            return self._left(phase, silo, str(exc))
        self._relay += relay
        return []

    def _left(self, phase: Phase, silo: str, why: str) -> list[Left]:
        if self._server is not None:
            return self._drop(silo, why, phase.name, phase.round)
        self._missed[silo] = why
        if phase.kind is TaskKind.FIT:
            self._arrived[silo] = None
            self._fold()
        answered = len(self.silos) - len(self._missed)
        left = [Left(silo, phase.name, phase.round, why)]
        if answered < self.spec.quorum:
            named = "; ".join(f"'{s}' ({w})" for s, w in self._missed.items())
            raise QuorumLost(
                f"{phase.name}: {answered} of {len(self.silos)} silos answered, fewer than "
                f"the job's min_silos of {self.spec.quorum}; missing: {named}",
                left,
            )
        return left

    def _drop(self, silo: str, why: str, phase: str, round_: int = 0) -> list[Left]:
        """Leave ``silo`` out of the rest of a secure job."""
        if silo not in self.active:
            return []
        self.active.remove(silo)
        self.dropped[silo] = why
        self._missed[silo] = why
        return [Left(silo, phase, round_, why, for_good=True)]

    # -- rounds a submitter closes --------------------------------------------------------------

    def aggregate(
        self,
        round_: int,
        current: Parameters,
        answers: Sequence[Answer],
    ) -> RoundClosed:
        """Close ``round_`` from ``answers`` (train steps from ``current``), in their order.

        For pipelines whose rounds a submitter drives, one step at a time.
        """
        aggregation = self.strategy.begin_aggregation(round_, current)
        self._missed = {}
        for answer in answers:
            self._record(round_, answer)
            if answer.update is None:
                raise RuntimeError(f"silo '{answer.silo}' answered a fit without an update")
            aggregation.add(answer.silo, answer.update, answer.num_samples)
        return self._closed(round_, aggregation.finish(), {})


class QuorumLost(JobFailed):
    """Too few silos are left for the job's quorum; ``left`` says who left last."""

    def __init__(self, message: str, left: list[Left]) -> None:
        super().__init__(message)
        self.left = left
