"""The server (orchestrator) side of secure aggregation: a state machine with no I/O.

The server relays: it broadcasts keys, routes encrypted shares it cannot read, and sums
masked vectors as they arrive into one accumulator, so its memory grows with the model,
not with the number of silos, and it never holds any single client's unmasked vector.
After a round's inputs it asks the survivors for shares, rebuilds the survivors' self
masks and the dropped clients' per-round ``s`` keys, removes every mask left in the sum
and decodes it.

Stages close by themselves once every expected party has answered; the caller closes a
stage early (a timeout) with :meth:`SecAggServer.close_keys`,
:meth:`SecAggServer.close_sharing`, :meth:`SecAggServer.close_inputs`, and ends a round
with :meth:`SecAggServer.finish_round`. Fewer answers than the threshold raise
:class:`SecAggAborted`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from fedsilo.errors import AggregationError
from fedsilo.privacy._spec import MaskPlan
from fedsilo.privacy.secagg import _crypto, _fixedpoint, _shamir
from fedsilo.privacy.secagg._client import default_threshold
from fedsilo.privacy.secagg._errors import SecAggAborted, SecAggError, SecAggProtocolError
from fedsilo.privacy.secagg._messages import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    MaskedVector,
    PartyKeys,
    ShareBundle,
    ShareDelivery,
    TensorLayout,
    UnmaskRequest,
    UnmaskResponse,
    Words,
)

__all__ = ["AggregateResult", "SecAggServer"]


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of one round: ``sum(w * x)`` per array name and ``sum(w)``."""

    round: int
    weighted_sum: dict[str, npt.NDArray[np.float64]]
    total_weight: float
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def mean(self) -> dict[str, npt.NDArray[np.float64]]:
        """The weighted mean ``sum(w * x) / sum(w)`` per array name."""
        if self.total_weight <= 0:
            raise AggregationError(f"round {self.round}: the weights sum to {self.total_weight}")
        return {name: total / self.total_weight for name, total in self.weighted_sum.items()}


class _Stage(Enum):
    KEYS = "advertise keys"
    SHARES = "share secrets"
    READY = "rounds"


@dataclass
class _Round:
    """What the server holds during one round: the running sum of masked vectors only."""

    layout: tuple[TensorLayout, ...]
    total: Words
    senders: list[str]
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    responses: dict[str, UnmaskResponse] = field(default_factory=dict)

    @property
    def unmasking(self) -> bool:
        return bool(self.survivors)


class SecAggServer:
    """The orchestrator's party in secure aggregation: it only ever learns the sum.

    ``client_ids`` are every silo of the job; ``threshold`` defaults to a majority (at
    least 2). Feed it what clients send with :meth:`feed`; relay what it returns to each
    message's ``recipient``.
    """

    def __init__(
        self,
        client_ids: Iterable[str],
        *,
        job_id: str,
        rounds: int,
        threshold: int | None = None,
        bits: int = 24,
    ) -> None:
        ids = tuple(client_ids)
        if len(set(ids)) != len(ids) or len(ids) < 2:
            raise SecAggProtocolError("secure aggregation needs at least 2 distinct client ids")
        self.threshold = default_threshold(len(ids)) if threshold is None else threshold
        if not 2 <= self.threshold <= len(ids):
            raise SecAggProtocolError(
                f"threshold {self.threshold} must be between 2 and the {len(ids)} clients"
            )
        if rounds < 1:
            raise SecAggProtocolError(f"rounds must be at least 1, not {rounds}")
        self.client_ids = tuple(sorted(ids))
        self.job_id = job_id
        self.rounds = rounds
        self.bits = bits
        self._stage = _Stage.KEYS
        self._keys: dict[str, PartyKeys] = {}
        self._bundles: dict[str, ShareBundle] = {}
        self._members: tuple[str, ...] = ()
        self._x: dict[str, int] = {}
        self._open: dict[int, _Round] = {}
        self._closed: set[int] = set()
        self._plans: dict[int, MaskPlan] = {}

    @property
    def members(self) -> tuple[str, ...]:
        """The clients that finished setup (sorted); empty until setup is done."""
        return self._members

    def feed(
        self, message: AdvertiseKeys | ShareBundle | MaskedInput | MaskedVector | UnmaskResponse
    ) -> list[KeyRoster | ShareDelivery | UnmaskRequest]:
        """Take one client message; return the messages to relay (each names its recipient).

        Answers to :class:`UnmaskRequest` return nothing: call :meth:`finish_round` once
        :meth:`ready` says every survivor answered, or when the wait is over.
        """
        if message.job_id != self.job_id:
            raise SecAggProtocolError(
                f"the server is in job '{self.job_id}', not '{message.job_id}'"
            )
        if isinstance(message, AdvertiseKeys):
            return list(self._on_keys(message))
        if isinstance(message, ShareBundle):
            return list(self._on_bundle(message))
        if isinstance(message, MaskedInput | MaskedVector):
            return list(self.add_masked(message))
        if isinstance(message, UnmaskResponse):
            self._on_response(message)
            return []
        raise SecAggProtocolError(f"the server does not accept {type(message).__name__}")

    def _expect(self, stage: _Stage, what: str) -> None:
        if self._stage is not stage:
            raise SecAggProtocolError(
                f"the server got {what} during the '{self._stage.value}' stage"
            )

    def _on_keys(self, message: AdvertiseKeys) -> list[KeyRoster]:
        self._expect(_Stage.KEYS, f"keys from '{message.sender}'")
        if message.sender not in self.client_ids:
            raise SecAggProtocolError(f"'{message.sender}' is not a client of this job")
        if len(message.keys.s_public) != self.rounds:
            raise SecAggProtocolError(f"'{message.sender}' advertised keys for the wrong rounds")
        if self._keys.setdefault(message.sender, message.keys) != message.keys:
            raise SecAggProtocolError(f"'{message.sender}' advertised two different key sets")
        return self.close_keys() if len(self._keys) == len(self.client_ids) else []

    def close_keys(self) -> list[KeyRoster]:
        """End setup step 1 with the clients that advertised; broadcast the roster."""
        self._expect(_Stage.KEYS, "the end of key advertising")
        if len(self._keys) < self.threshold:
            raise SecAggAborted(
                stage="advertise keys",
                arrived=len(self._keys),
                threshold=self.threshold,
                round=None,
            )
        order = sorted(self._keys)
        self._x = {v: i + 1 for i, v in enumerate(order)}
        keys = tuple(self._keys[v] for v in order)
        self._stage = _Stage.SHARES
        return [
            KeyRoster(
                job_id=self.job_id,
                recipient=v,
                threshold=self.threshold,
                rounds=self.rounds,
                bits=self.bits,
                keys=keys,
            )
            for v in order
        ]

    def _on_bundle(self, bundle: ShareBundle) -> list[ShareDelivery]:
        self._expect(_Stage.SHARES, f"shares from '{bundle.sender}'")
        if bundle.sender not in self._keys:
            raise SecAggProtocolError(f"'{bundle.sender}' is not in the roster")
        if set(bundle.ciphertexts) != set(self._keys):
            raise SecAggProtocolError(f"'{bundle.sender}' did not deal one share per member")
        self._bundles[bundle.sender] = bundle
        return self.close_sharing() if len(self._bundles) == len(self._keys) else []

    def close_sharing(self) -> list[ShareDelivery]:
        """End setup step 2 with the clients that dealt shares; route each its shares."""
        self._expect(_Stage.SHARES, "the end of sharing")
        if len(self._bundles) < self.threshold:
            raise SecAggAborted(
                stage="share secrets",
                arrived=len(self._bundles),
                threshold=self.threshold,
                round=None,
            )
        self._members = tuple(sorted(self._bundles))
        deliveries = [
            ShareDelivery(
                job_id=self.job_id,
                recipient=v,
                ciphertexts={u: self._bundles[u].ciphertexts[v] for u in self._members},
            )
            for v in self._members
        ]
        self._bundles = {}
        self._stage = _Stage.READY
        return deliveries

    def _round(self, round: int) -> _Round | None:
        self._expect(_Stage.READY, f"a message of round {round}")
        if round in self._closed:
            raise SecAggProtocolError(f"round {round} is over (finished or aborted)")
        if not 1 <= round <= self.rounds:
            raise SecAggProtocolError(f"round {round} is outside 1..{self.rounds}")
        return self._open.get(round)

    def plan_round(self, round: int, *, word_bits: int = 64, weight_scale: float = 1.0) -> None:
        """Say how every client encodes its input of ``round``: word size and weight scale.

        Every client of the round gets the same two (in its :class:`~fedsilo.privacy.MaskPlan`);
        an input in words of another size is refused, and the scale is divided out of the
        sum. A round that is not planned takes 64-bit words and raw weights.
        """
        if self._round(round) is not None:
            raise SecAggProtocolError(f"round {round} already takes input; plan it before")
        try:
            plan = MaskPlan.model_validate({"word_bits": word_bits, "weight_scale": weight_scale})
        except ValidationError as exc:
            raise SecAggProtocolError(
                f"round {round}: words are 32 or 64 bits (not {word_bits}) and the weight "
                f"scale a positive number (not {weight_scale})"
            ) from exc
        self._plans[round] = plan

    def add_masked(self, message: MaskedInput | MaskedVector) -> list[UnmaskRequest]:
        """Round step 3: add one masked vector to the round's running sum."""
        state = self._round(message.round)
        sender = message.sender
        if sender not in self._members:
            raise SecAggProtocolError(f"'{sender}' did not finish setup and cannot send input")
        word_bits = self._plans.get(message.round, MaskPlan()).word_bits
        if message.word_bits != word_bits:
            raise SecAggProtocolError(
                f"'{sender}' sent {message.word_bits}-bit words; round {message.round} "
                f"takes {word_bits}-bit words"
            )
        if state is None:
            vector = message.vector()
            state = self._open[message.round] = _Round(
                layout=message.layout, total=np.array(vector, dtype=vector.dtype), senders=[]
            )
        elif state.unmasking:
            raise SecAggProtocolError(
                f"input from '{sender}' arrived after round {message.round} stopped taking input"
            )
        elif sender in state.senders:
            raise SecAggProtocolError(
                f"'{sender}' already sent its input for round {message.round}"
            )
        elif message.layout != state.layout:
            raise SecAggProtocolError(f"'{sender}' sent arrays of other names or shapes")
        else:
            np.add(state.total, message.vector(), out=state.total)
        state.senders.append(sender)
        if len(state.senders) == len(self._members):
            return self.close_inputs(message.round)
        return []

    def close_inputs(self, round: int) -> list[UnmaskRequest]:
        """Round step 4: stop taking input; ask each survivor for its unmasking shares."""
        state = self._round(round)
        if state is not None and state.unmasking:
            raise SecAggProtocolError(f"round {round} already stopped taking input")
        arrived = 0 if state is None else len(state.senders)
        if state is None or arrived < self.threshold:
            self._forget(round)
            raise SecAggAborted(
                stage="masked input", arrived=arrived, threshold=self.threshold, round=round
            )
        state.survivors = tuple(sorted(state.senders))
        state.dropped = tuple(v for v in self._members if v not in state.survivors)
        return [
            UnmaskRequest(
                job_id=self.job_id,
                recipient=u,
                round=round,
                survivors=state.survivors,
                dropped=state.dropped,
            )
            for u in state.survivors
        ]

    def _on_response(self, response: UnmaskResponse) -> None:
        state = self._round(response.round)
        if state is None or not state.unmasking:
            raise SecAggProtocolError(f"no unmasking was asked for in round {response.round}")
        if response.sender not in state.survivors or response.sender in state.responses:
            raise SecAggProtocolError(f"unexpected unmask response from '{response.sender}'")
        if set(response.b_shares) != set(state.survivors) or set(response.s_shares) != set(
            state.dropped
        ):
            raise SecAggProtocolError(f"'{response.sender}' answered another unmask request")
        state.responses[response.sender] = response

    def ready(self, round: int) -> bool:
        """Whether every survivor of ``round`` has sent its unmasking shares."""
        state = self._open.get(round)
        return (
            state is not None and state.unmasking and len(state.responses) == len(state.survivors)
        )

    def finish_round(self, round: int) -> AggregateResult:
        """Round step 5: remove every mask from the sum and decode it.

        Needs answers from at least ``threshold`` survivors; fewer abort the round.
        """
        state = self._round(round)
        if state is None or not state.unmasking:
            raise SecAggProtocolError(f"round {round} has not stopped taking input")
        if len(state.responses) < self.threshold:
            self._forget(round)
            raise SecAggAborted(
                stage="unmask", arrived=len(state.responses), threshold=self.threshold, round=round
            )
        responses = state.responses.values()
        total = state.total
        unmask: list[tuple[bytes, int]] = []
        for v in state.survivors:
            shares = {
                self._x[r.sender]: _shamir.element_from_bytes(r.b_shares[v]) for r in responses
            }
            unmask.append((_shamir.reconstruct(shares, self.threshold), -1))
        for v in state.dropped:
            shares = {
                self._x[r.sender]: _shamir.element_from_bytes(r.s_shares[v]) for r in responses
            }
            s_key = _shamir.reconstruct(shares, self.threshold)
            if _crypto.public_key(s_key) != self._keys[v].s_public[round - 1]:
                self._forget(round)
                raise SecAggError(
                    f"round {round}: the shares of '{v}''s key do not match its public key"
                )
            for u in state.survivors:
                seed = _crypto.pairwise_seed(
                    s_key, self._keys[u].s_public[round - 1], self.job_id, round
                )
                # u added the mask if u < v, subtracted it otherwise: undo that
                unmask.append((seed, -1 if u < v else 1))
        _crypto.apply_masks(total, unmask, job_id=self.job_id, round=round)
        plan = self._plans.get(round, MaskPlan())
        arrays, total_weight = _fixedpoint.decode(
            total, state.layout, bits=self.bits, weight_scale=plan.weight_scale
        )
        result = AggregateResult(
            round=round,
            weighted_sum=arrays,
            total_weight=total_weight,
            survivors=state.survivors,
            dropped=state.dropped,
        )
        self._forget(round)
        return result

    def _forget(self, round: int) -> None:
        """Forget everything about ``round``; no message of it is accepted any more."""
        self._open.pop(round, None)
        self._plans.pop(round, None)
        self._closed.add(round)
