"""Secure aggregation over the running federation: the orchestrator's party and its relay.

The orchestrator drives :class:`~fedsilo.privacy.secagg.SecAggServer` and relays every
message through ordinary tasks (``secagg`` tasks, and the masked update a ``fit`` task
uploads), so a silo still opens no port and pulls everything it does. Setup runs once per
job, in three exchanges (keys, encrypted shares, their delivery); each round is one
``fit`` fan-out, whose masked updates are summed as they arrive, and one unmasking
exchange with the survivors. Each fit task carries the round's public encoding
(:func:`~fedsilo.privacy.round_plan`): 32-bit words once every silo's weight is known,
from the spec or from the samples it reported in an earlier round.

A silo that fails, disconnects, or stays silent past the spec's ``timeout_seconds`` is
dropped: the round goes on without it (its masks are removed with the survivors' shares)
and it takes no further part in the job. Fewer silos than the threshold abort the job,
with every dropped silo and why in the error.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedsilo.api._messages import TaskKind
from fedsilo.errors import JobFailed, TaskFailed
from fedsilo.privacy import SecureAggregationSpec, mask_weights, round_plan, secure_global
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
    load_masked,
    parse_message,
)
from fedsilo.strategies import Strategy
from fedsilo.tensors import Parameters

if TYPE_CHECKING:
    from fedsilo.orchestrator._loop import _JobRun

__all__ = ["SecureRounds"]

log = logging.getLogger("fedsilo.orchestrator")

_ClientMessage = AdvertiseKeys | ShareBundle | MaskedInput | MaskedVector | UnmaskResponse
_ServerMessage = KeyRoster | ShareDelivery | UnmaskRequest


class SecureRounds:
    """One job's secure aggregation: setup once, then :meth:`round` for every round."""

    def __init__(self, run: _JobRun, strategy: Strategy, spec: SecureAggregationSpec) -> None:
        silos = run.spec.silos
        self.run = run
        self.strategy = strategy
        self.spec = spec
        self.active: list[str] = list(silos)
        self.dropped: dict[str, str] = {}
        self.reported: dict[str, float] = {}  # each silo's latest num_samples
        self.server = SecAggServer(
            silos,
            job_id=run.job_id,
            rounds=run.spec.rounds,
            threshold=spec.threshold_for(len(silos)),
            bits=spec.fixed_point_bits,
        )
        mask_weights(strategy, silos)  # refuses a strategy that needs each update

    # -- bookkeeping ------------------------------------------------------------------------

    def drop(self, silo: str, why: str | None) -> None:
        """Leave ``silo`` out of the rest of the job, saying why in the audit log."""
        if silo not in self.active:
            return
        self.active.remove(silo)
        reason = why or "no reason given"
        self.dropped[silo] = reason
        log.warning(
            "job %s: silo %s dropped from secure aggregation: %s", self.run.job_id, silo, reason
        )
        self.run.orch.audit.append(
            "secagg.dropped", job_id=self.run.job_id, silo=silo, reason=reason
        )

    def _aborted(self, exc: SecAggAborted) -> JobFailed:
        dropped = "; ".join(f"{silo}: {why}" for silo, why in self.dropped.items())
        return JobFailed(f"{exc}" + (f" (dropped: {dropped})" if dropped else ""))

    def report(self, result: AggregateResult) -> dict[str, float]:
        """The round's line in the job's privacy record: how many silos were in the sum."""
        return {
            "secure_aggregation_silos": float(len(result.survivors)),
            "secure_aggregation_dropped": float(len(result.dropped)),
        }

    # -- relaying ---------------------------------------------------------------------------

    def _parse(self, silo: str, text: str) -> _ClientMessage:
        message = parse_message(text)
        if not isinstance(message, _ClientMessage):
            raise SecAggProtocolError(f"silo '{silo}' sent a {type(message).__name__}")
        if message.sender != silo:
            raise SecAggProtocolError(f"silo '{silo}' sent a message as '{message.sender}'")
        return message

    def _feed(self, silo: str, message: _ClientMessage) -> list[_ServerMessage]:
        """Give the server one silo's message; a message it refuses drops that silo."""
        try:
            return list(self.server.feed(message))
        except SecAggAborted:
            raise
        except SecAggProtocolError as exc:
            self.drop(silo, str(exc))
            return []

    async def _exchange(
        self, phase: str, payloads: dict[str, str | None], round_: int = 0
    ) -> list[_ServerMessage]:
        """Send each silo its message in a ``secagg`` task; feed every answer to the server."""
        out = self.run.fan_out(
            TaskKind.SECAGG,
            phase,
            silos=list(payloads),
            per_silo={silo: {"secagg": text} for silo, text in payloads.items()},
            tolerate=True,
            timeout=self.spec.timeout_seconds,
            round=round_,
        )
        relayed: list[_ServerMessage] = []
        async with aclosing(out) as outcomes:
            async for outcome in outcomes:
                if not outcome.result.ok:
                    self.drop(outcome.silo, outcome.result.error)
                    continue
                try:
                    messages = [self._parse(outcome.silo, t) for t in outcome.result.secagg]
                except SecAggProtocolError as exc:
                    self.drop(outcome.silo, str(exc))
                    continue
                for message in messages:
                    relayed += await asyncio.to_thread(self._feed, outcome.silo, message)
        return relayed

    # -- the protocol -----------------------------------------------------------------------

    async def setup(self) -> None:
        """Exchange keys and encrypted shares; afterwards :attr:`active` are the members."""
        orch, job_id = self.run.orch, self.run.job_id
        try:
            orch.update_job(job_id, detail="secure aggregation: exchanging keys")
            rosters = await self._exchange(
                "secure aggregation setup (keys)", dict.fromkeys(self.active)
            )
            rosters = rosters or list(self.server.close_keys())
            orch.update_job(job_id, detail="secure aggregation: sharing secrets")
            deliveries = await self._exchange(
                "secure aggregation setup (shares)",
                {m.recipient: m.model_dump_json() for m in rosters if m.recipient in self.active},
            )
            deliveries = deliveries or list(self.server.close_sharing())
            for silo in [s for s in self.active if s not in self.server.members]:
                self.drop(silo, "did not finish setting up secure aggregation")
            await self._exchange(
                "secure aggregation setup (delivery)",
                {
                    m.recipient: m.model_dump_json()
                    for m in deliveries
                    if m.recipient in self.active
                },
            )
            if len(self.active) < self.server.threshold:
                raise SecAggAborted(
                    stage="share delivery",
                    arrived=len(self.active),
                    threshold=self.server.threshold,
                    round=None,
                )
        except SecAggAborted as exc:
            raise self._aborted(exc) from exc
        orch.audit.append(
            "secagg.ready",
            job_id=job_id,
            members=list(self.active),
            threshold=self.server.threshold,
        )

    async def round(
        self, round_: int, current: Parameters, global_digest: str
    ) -> tuple[dict[str, npt.NDArray[np.generic]], AggregateResult]:
        """Run one round: masked updates summed as they arrive, then unmasking."""
        run, orch = self.run, self.run.orch
        offered = list(self.active)
        weights = mask_weights(self.strategy, offered)
        plan = round_plan(
            weights,
            self.reported,
            bits=self.spec.fixed_point_bits,
            clip_range=self.spec.clip_range,
        )
        self.server.plan_round(round_, word_bits=plan.word_bits, weight_scale=plan.weight_scale)
        fit = run.fan_out(
            TaskKind.FIT,
            f"round {round_}",
            self.strategy.configure_round(round_, offered),
            silos=offered,
            per_silo={
                silo: {"mask_weight": weights[silo], "mask_plan": plan.for_silo(silo)}
                for silo in offered
            },
            tolerate=True,
            timeout=self.spec.timeout_seconds,
            round=round_,
            params_digest=global_digest,
            evaluate_first=round_ > 1,
        )
        requests: list[_ServerMessage] = []
        try:
            async with aclosing(fit) as outcomes:
                async for out in outcomes:
                    if not out.result.ok:
                        self.drop(out.silo, out.result.error)
                        continue
                    run.record(round_, out)
                    samples = (out.result.train_metrics or {}).get("num_samples")
                    if samples is not None:
                        self.reported[out.silo] = samples
                    try:
                        masked = await asyncio.to_thread(
                            load_masked,
                            run.params_path(out),
                            job_id=run.job_id,
                            sender=out.silo,
                            round_=round_,
                        )
                    except (SecAggProtocolError, TaskFailed) as exc:
                        self.drop(out.silo, str(exc))
                        continue
                    requests += await asyncio.to_thread(self._feed, out.silo, masked)
            requests = requests or list(self.server.close_inputs(round_))
            orch.update_job(run.job_id, detail=f"round {round_}: unmasking the sum")
            await self._exchange(
                f"round {round_} unmasking",
                {m.recipient: m.model_dump_json() for m in requests if m.recipient in self.active},
                round_,
            )
            result = await asyncio.to_thread(self.server.finish_round, round_)
        except SecAggAborted as exc:
            raise self._aborted(exc) from exc
        params = await asyncio.to_thread(secure_global, self.strategy, round_, current, result)
        return params, result
