"""Errors of secure aggregation, a branch of :class:`fedsilo.errors.AggregationError`::

    AggregationError
    └── SecAggError                 secure aggregation could not go on
        ├── SecAggAborted           fewer parties than the threshold: the round is void
        ├── SecAggProtocolError     a message is out of place (stage, job, party, round)
        │   └── UnmaskRefused       a request would reveal both secrets of one party
        ├── ShareDecryptionError    a share's ciphertext does not authenticate
        └── FixedPointRangeError    an input cannot be encoded without overflowing the sum

Every failure of the underlying cryptography library is wrapped here where it enters.
"""

from __future__ import annotations

from fedsilo.errors import AggregationError

__all__ = [
    "FixedPointRangeError",
    "SecAggAborted",
    "SecAggError",
    "SecAggProtocolError",
    "ShareDecryptionError",
    "UnmaskRefused",
]


class SecAggError(AggregationError):
    """Secure aggregation could not go on; the message says which party and why."""


class SecAggAborted(SecAggError):
    """Fewer parties than the threshold answered a stage, so nothing can be recovered.

    The round (or the setup, when ``round`` is ``None``) is abandoned cleanly: no partial
    sum is returned and no further secret is asked for.
    """

    def __init__(self, *, stage: str, arrived: int, threshold: int, round: int | None) -> None:
        self.stage = stage
        self.arrived = arrived
        self.threshold = threshold
        self.round = round
        where = "setup" if round is None else f"round {round}"
        super().__init__(
            f"secure aggregation aborted in {where}: only {arrived} part"
            f"{'y' if arrived == 1 else 'ies'} answered the {stage} stage, "
            f"the threshold is {threshold}"
        )


class SecAggProtocolError(SecAggError):
    """A message arrived that this party's state machine cannot accept now.

    Wrong job id, unknown sender, a stage already closed, a round outside the setup, a
    request inconsistent with what the party knows: the message is refused unread.
    """


class UnmaskRefused(SecAggProtocolError):
    """A client refuses an unmasking request that would break the security invariant.

    Revealing, for the same round, both the self-mask seed ``b`` and the pairwise-mask key
    ``s`` of one party would let the server remove every mask from that party's upload.
    """

    def __init__(self, client: str, party: str, round: int, reason: str) -> None:
        self.client = client
        self.party = party
        self.round = round
        super().__init__(
            f"client '{client}' refuses to reveal shares of '{party}' for round {round}: {reason}"
        )


class ShareDecryptionError(SecAggError):
    """An encrypted share does not authenticate: it was altered, misrouted or replayed."""

    def __init__(self, receiver: str, sender: str) -> None:
        self.receiver = receiver
        self.sender = sender
        super().__init__(
            f"client '{receiver}' cannot decrypt the share sent by '{sender}': the ciphertext "
            "was altered in transit, or was not made for this receiver and job"
        )


class FixedPointRangeError(SecAggError):
    """An input or weight is too large (or not finite) for the fixed-point encoding.

    The sum of every client's ``weight * value * 2**bits`` must stay below ``2**63``; the
    message says which bound failed and how to fix it (normalise the weights).
    """
