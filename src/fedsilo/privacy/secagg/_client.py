"""The client (silo) side of secure aggregation: a state machine with no I/O.

One :class:`SecAggClient` lives for a whole FL job. Setup runs once (advertise keys,
share secrets); then each round the client masks its input and, when asked, reveals the
shares that let the server remove exactly the masks it must, and no more.

Why one ``s`` key pair per round rather than one per job: revealing a dropped client's
``s`` key exposes every pairwise mask made with it. Were the key reused, a client that
survived round 1 (its ``b_1`` revealed) and dropped in round 2 (its ``s`` revealed) would
have its round-1 input exposed. Per-round ``s`` keys make the invariant local to a round:
for each round and each party, a client reveals the share of ``b`` or of ``s``, never both.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedsilo.privacy._spec import MaskPlan, default_threshold
from fedsilo.privacy.secagg import _crypto, _fixedpoint, _shamir
from fedsilo.privacy.secagg._errors import SecAggProtocolError, UnmaskRefused
from fedsilo.privacy.secagg._messages import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    MaskedVector,
    PartyKeys,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
    Words,
)

__all__ = ["RoundMask", "SecAggClient", "default_threshold"]


class _Stage(Enum):
    ADVERTISE = "advertise keys"
    SHARE = "share secrets"
    DELIVERY = "receive shares"
    READY = "rounds"


@dataclass(frozen=True, eq=False)
class RoundMask:
    """One client's total mask for one round (:meth:`SecAggClient.round_mask`)."""

    job_id: str
    client_id: str
    round: int
    words: Words = field(repr=False)


@dataclass(frozen=True)
class _Held:
    """The shares one sender dealt this client: ``b[r-1]`` and ``s[r-1]`` per round."""

    b: tuple[int, ...]
    s: tuple[int, ...]


class SecAggClient:
    """One silo's party in secure aggregation (Bonawitz et al. 2017, honest-but-curious server).

    Flow: :meth:`advertise` → server; :meth:`feed` (:class:`KeyRoster`) → a
    :class:`ShareBundle`; :meth:`feed` (:class:`ShareDelivery`) → nothing, setup is done;
    then per round :meth:`masked_input` → server and :meth:`feed` (:class:`UnmaskRequest`)
    → an :class:`UnmaskResponse`.

    ``threshold`` left ``None`` accepts the server's threshold if it is at least a majority
    of the roster; given, it must match exactly. ``rng`` is for tests only: left ``None``,
    every key, seed, share coefficient and nonce comes from the OS's secure source.
    """

    def __init__(
        self,
        client_id: str,
        *,
        job_id: str,
        rounds: int,
        threshold: int | None = None,
        bits: int = 24,
        clip_range: float = 64.0,
        rng: random.Random | None = None,
    ) -> None:
        if rounds < 1:
            raise SecAggProtocolError(f"rounds must be at least 1, not {rounds}")
        if not 1 <= bits <= 52:
            raise SecAggProtocolError(f"bits must be between 1 and 52, not {bits}")
        if not clip_range > 0:
            raise SecAggProtocolError(f"clip_range must be positive, not {clip_range}")
        self.client_id = client_id
        self.job_id = job_id
        self.rounds = rounds
        self.bits = bits
        self.clip_range = clip_range
        self._threshold = threshold
        self._rng = rng if rng is not None else secrets.SystemRandom()
        self._c_private = _crypto.new_private_key(self._rng)
        self._s_private = [_crypto.new_private_key(self._rng) for _ in range(rounds)]
        self._b_seeds = [self._rng.randbytes(_shamir.SECRET_BYTES) for _ in range(rounds)]
        self._keys = PartyKeys(
            client_id=client_id,
            c_public=_crypto.public_key(self._c_private),
            s_public=tuple(_crypto.public_key(k) for k in self._s_private),
        )
        self._stage = _Stage.ADVERTISE
        self._roster: dict[str, PartyKeys] = {}
        self._members: tuple[str, ...] = ()
        self._held: dict[str, _Held] = {}
        self._sent: set[int] = set()
        self._revealed: dict[int, dict[str, Literal["b", "s"]]] = {}
        self.threshold = 0

    @property
    def members(self) -> tuple[str, ...]:
        """The clients that finished setup (sorted); empty until setup is done."""
        return self._members

    @property
    def ready(self) -> bool:
        """Whether setup is done and rounds can run."""
        return self._stage is _Stage.READY

    def advertise(self) -> AdvertiseKeys:
        """Setup step 1: this client's public keys, for the server to broadcast."""
        return AdvertiseKeys(job_id=self.job_id, sender=self.client_id, keys=self._keys)

    def feed(
        self, message: KeyRoster | ShareDelivery | UnmaskRequest
    ) -> list[ShareBundle | UnmaskResponse]:
        """Take one message from the server; return the messages to send back to it."""
        if message.job_id != self.job_id:
            raise SecAggProtocolError(
                f"client '{self.client_id}' is in job '{self.job_id}', not '{message.job_id}'"
            )
        if message.recipient != self.client_id:
            raise SecAggProtocolError(
                f"message for '{message.recipient}' delivered to '{self.client_id}'"
            )
        if isinstance(message, KeyRoster):
            return [self.on_roster(message)]
        if isinstance(message, ShareDelivery):
            self.on_shares(message)
            return []
        if isinstance(message, UnmaskRequest):
            return [self.unmask_shares(message)]
        raise SecAggProtocolError(f"a client does not accept {type(message).__name__}")

    def _expect(self, stage: _Stage, what: str) -> None:
        if self._stage is not stage:
            raise SecAggProtocolError(
                f"client '{self.client_id}' got {what} during the '{self._stage.value}' "
                f"stage, it expects it during '{stage.value}'"
            )

    def on_roster(self, roster: KeyRoster) -> ShareBundle:
        """Setup step 2: check the roster, then deal shares of every secret to every member."""
        if self._stage is _Stage.ADVERTISE:
            self._stage = _Stage.SHARE
        self._expect(_Stage.SHARE, "the key roster")
        ids = [k.client_id for k in roster.keys]
        expected_threshold = self._threshold or default_threshold(len(ids))
        problems = [
            (roster.rounds != self.rounds, f"rounds {roster.rounds} != {self.rounds}"),
            (roster.bits != self.bits, f"bits {roster.bits} != {self.bits}"),
            (len(set(ids)) != len(ids), "a client id appears twice"),
            (self._keys not in roster.keys, "this client's own keys are missing or altered"),
            (any(len(k.s_public) != self.rounds for k in roster.keys), "wrong number of s keys"),
            (len({k.c_public for k in roster.keys}) != len(ids), "two clients share a c key"),
            (
                len({s for k in roster.keys for s in k.s_public}) != len(ids) * self.rounds,
                "two clients share an s key",
            ),
            (
                roster.threshold != expected_threshold
                if self._threshold
                else roster.threshold < expected_threshold,
                f"threshold {roster.threshold} where this client expects {expected_threshold}",
            ),
            (len(ids) < roster.threshold, f"{len(ids)} clients are fewer than the threshold"),
        ]
        for failed, why in problems:
            if failed:
                raise SecAggProtocolError(f"client '{self.client_id}' rejects the roster: {why}")
        self.threshold = roster.threshold
        order = sorted(ids)
        self._roster = {k.client_id: k for k in roster.keys}
        xs = [order.index(v) + 1 for v in order]
        dealt = [
            _shamir.split(secret, xs, self.threshold, self._rng)
            for secret in (*self._b_seeds, *self._s_private)
        ]
        ciphertexts = {}
        for i, v in enumerate(order):
            plaintext = b"".join(_shamir.element_to_bytes(shares[i]) for shares in dealt)
            key = _crypto.share_key(self._c_private, self._roster[v].c_public, self.job_id)
            ciphertexts[v] = _crypto.encrypt_share(
                key, plaintext, job_id=self.job_id, sender=self.client_id, receiver=v, rng=self._rng
            )
        self._stage = _Stage.DELIVERY
        return ShareBundle(job_id=self.job_id, sender=self.client_id, ciphertexts=ciphertexts)

    def on_shares(self, delivery: ShareDelivery) -> None:
        """Setup step 2, end: decrypt and keep the shares others dealt to this client.

        The senders become the members of every round. A single altered ciphertext raises
        :class:`ShareDecryptionError` and leaves the client waiting for a good delivery.
        """
        self._expect(_Stage.DELIVERY, "the shares")
        senders = sorted(delivery.ciphertexts)
        if self.client_id not in senders or not set(senders) <= set(self._roster):
            raise SecAggProtocolError(
                f"client '{self.client_id}' got shares from outside the roster or none of its own"
            )
        if len(senders) < self.threshold:
            raise SecAggProtocolError(
                f"only {len(senders)} clients finished setup, the threshold is {self.threshold}"
            )
        width = _shamir.ELEMENT_BYTES
        held = {}
        for u in senders:
            key = _crypto.share_key(self._c_private, self._roster[u].c_public, self.job_id)
            plaintext = _crypto.decrypt_share(
                key, delivery.ciphertexts[u], job_id=self.job_id, sender=u, receiver=self.client_id
            )
            if len(plaintext) != 2 * self.rounds * width:
                raise SecAggProtocolError(f"the shares from '{u}' have the wrong length")
            values = [
                _shamir.element_from_bytes(plaintext[i : i + width])
                for i in range(0, len(plaintext), width)
            ]
            held[u] = _Held(b=tuple(values[: self.rounds]), s=tuple(values[self.rounds :]))
        self._held = held
        self._members = tuple(senders)
        self._stage = _Stage.READY

    def _check_round(self, round: int) -> None:
        if self._stage is not _Stage.READY:
            raise SecAggProtocolError(
                f"client '{self.client_id}' has not finished setup (it is at the "
                f"'{self._stage.value}' stage) and cannot take part in round {round}"
            )
        if not 1 <= round <= self.rounds:
            raise SecAggProtocolError(
                f"round {round} is outside the setup, which covers rounds 1..{self.rounds}; "
                "run a new setup (a new job id) for more rounds"
            )

    def round_mask(self, round: int, size: int, word_bits: int = 64) -> RoundMask:
        """The sum of every mask this client adds to its ``size``-word input of ``round``.

        That is ``PRG(b)`` plus or minus ``PRG(s_uv)`` for every other member ``v``: the
        costly part of masking, which depends on no data. Computing it ahead of time (while
        the job trains, or between rounds) and passing it to :meth:`masked_input` leaves
        one addition to do once the update is ready. It is as secret as the keys it comes
        from, and usable once, for this client's input of this round only. ``word_bits``
        is the round's word size (its :class:`~fedsilo.privacy.MaskPlan`).
        """
        self._check_round(round)
        if size < 1:
            raise SecAggProtocolError(f"a masked input holds at least 1 word, not {size}")
        if word_bits not in (32, 64):
            raise SecAggProtocolError(f"masked words are 32 or 64 bits, not {word_bits}")
        words: Words = np.zeros(size, dtype=np.uint32 if word_bits == 32 else np.uint64)
        seeds = [(self._b_seeds[round - 1], 1)]
        for v in self._members:
            if v == self.client_id:
                continue
            seed = _crypto.pairwise_seed(
                self._s_private[round - 1], self._roster[v].s_public[round - 1], self.job_id, round
            )
            seeds.append((seed, 1 if self.client_id < v else -1))
        _crypto.apply_masks(words, seeds, job_id=self.job_id, round=round)
        return RoundMask(job_id=self.job_id, client_id=self.client_id, round=round, words=words)

    def masked_input(
        self,
        round: int,
        arrays: Mapping[str, npt.NDArray[np.floating] | npt.NDArray[np.integer]],
        weight: float,
        *,
        mask: RoundMask | None = None,
        plan: MaskPlan | None = None,
    ) -> MaskedInput:
        """Round step 3: ``weight * arrays`` and ``weight``, fixed-point encoded and masked.

        ``plan`` is the round's public encoding (word size, weight scale, this client's
        weight limit); left ``None``, 64-bit words and the raw weight. ``mask`` is this
        round's :meth:`round_mask`, computed ahead of time; left ``None`` it is computed
        here. Each round number is usable once: a second input for the same round would
        reuse its masks, and the difference of the two uploads would reveal the difference
        of the inputs.
        """
        return self.masked_vector(round, arrays, weight, mask=mask, plan=plan).message()

    def masked_vector(
        self,
        round: int,
        arrays: Mapping[str, npt.NDArray[np.generic]],
        weight: float,
        *,
        base: Mapping[str, npt.NDArray[np.generic]] | None = None,
        scale: float = 1.0,
        mask: RoundMask | None = None,
        plan: MaskPlan | None = None,
    ) -> MaskedVector:
        """:meth:`masked_input` as an array of words, without the bytes of a message.

        With ``base`` the input is ``scale * (arrays - base)``, computed while encoding. A
        given ``mask`` is used up: its words become the masked vector.
        """
        plan = plan or MaskPlan()
        self._check_round(round)
        if round in self._sent:
            raise SecAggProtocolError(
                f"client '{self.client_id}' already sent its input for round {round}; "
                "masks are never reused, use the next round number"
            )
        layout, vector = _fixedpoint.encode(
            arrays,
            weight * plan.weight_scale,
            bits=self.bits,
            clip_range=self.clip_range,
            parties=len(self._members),
            base=base,
            scale=scale,
            word_bits=plan.word_bits,
            limit=plan.weight_limit,
        )
        if mask is None:
            mask = self.round_mask(round, vector.size, plan.word_bits)
        elif (mask.job_id, mask.client_id, mask.round) != (self.job_id, self.client_id, round):
            raise SecAggProtocolError(
                f"client '{self.client_id}' was given the mask of job {mask.job_id}, client "
                f"'{mask.client_id}', round {mask.round} for its input of round {round}"
            )
        elif mask.words.shape != vector.shape or mask.words.dtype != vector.dtype:
            raise SecAggProtocolError(
                f"the mask of round {round} holds {mask.words.size} {mask.words.dtype} words; "
                f"the input needs {vector.size} {vector.dtype} words"
            )
        self._sent.add(round)
        words = mask.words
        np.add(words, vector, out=words)
        return MaskedVector(
            job_id=self.job_id, sender=self.client_id, round=round, layout=layout, words=words
        )

    def unmask_shares(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round step 5: shares of ``b`` of each survivor and of ``s`` of each dropped client.

        Refuses (:class:`UnmaskRefused`) any request that would reveal, for one round, both
        kinds of share of the same party, counting every earlier answer for that round.
        """
        round = request.round
        self._check_round(round)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            party = min(both)
            raise UnmaskRefused(
                self.client_id, party, round, "it is listed as survivor and dropped"
            )
        if round not in self._sent or self.client_id not in survivors:
            raise SecAggProtocolError(
                f"client '{self.client_id}' sent no input for round {round}, "
                "so it cannot be a survivor"
            )
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise SecAggProtocolError("a client is listed twice in the unmask request")
        if survivors | dropped != set(self._members):
            raise SecAggProtocolError(
                "survivors and dropped clients must together be exactly the setup's members"
            )
        if len(survivors) < self.threshold:
            raise SecAggProtocolError(
                f"{len(survivors)} survivors are fewer than the threshold {self.threshold}"
            )
        revealed = self._revealed.setdefault(round, {})
        for party, kind in [*((v, "b") for v in survivors), *((v, "s") for v in dropped)]:
            if revealed.get(party, kind) != kind:
                raise UnmaskRefused(
                    self.client_id,
                    party,
                    round,
                    f"its {revealed[party]} share was already revealed, revealing its {kind} "
                    "share too would expose its input",
                )
        for v in survivors:
            revealed[v] = "b"
        for v in dropped:
            revealed[v] = "s"
        return UnmaskResponse(
            job_id=self.job_id,
            sender=self.client_id,
            round=round,
            b_shares={
                v: _shamir.element_to_bytes(self._held[v].b[round - 1]) for v in sorted(survivors)
            },
            s_shares={
                v: _shamir.element_to_bytes(self._held[v].s[round - 1]) for v in sorted(dropped)
            },
        )
