"""Secure aggregation: pairwise masking with dropout recovery (Bonawitz et al. 2017).

The orchestrator only ever learns the weighted sum of the silos' updates. Each party is a
state machine without I/O (``feed(message) -> messages``); the messages are frozen
pydantic models that travel as JSON through the orchestrator, which relays them.

Message flow (``→S`` to the server, ``S→`` from it to each named client)::

    setup, once per job   client.advertise()         AdvertiseKeys  →S
                          server.feed(...)           KeyRoster      S→ every advertiser
                          client.feed(KeyRoster)     ShareBundle    →S  (encrypted shares)
                          server.feed(...)           ShareDelivery  S→ every dealer
                          client.feed(ShareDelivery) (setup done)
    each round r          server.plan_round(r, ...)  the round's public plan (word size,
                                                     weight scale), sent with each task
                          client.masked_input(r, arrays, weight, plan=...)  MaskedInput  →S
                          server.feed(...)           UnmaskRequest  S→ every survivor
                          client.feed(UnmaskRequest) UnmaskResponse →S
                          server.finish_round(r)     AggregateResult (sum of w*x, sum of w)

A stage closes by itself when every expected party answered; on a timeout the
orchestrator closes it with ``close_keys``, ``close_sharing``, ``close_inputs(r)`` or
``finish_round(r)``, which raise :class:`SecAggAborted` below the threshold.
"""

from fedsilo.privacy._spec import default_threshold
from fedsilo.privacy.secagg._client import RoundMask, SecAggClient
from fedsilo.privacy.secagg._errors import (
    FixedPointRangeError,
    SecAggAborted,
    SecAggError,
    SecAggProtocolError,
    ShareDecryptionError,
    UnmaskRefused,
)
from fedsilo.privacy.secagg._messages import (
    AdvertiseKeys,
    ClientMessage,
    KeyRoster,
    MaskedInput,
    MaskedVector,
    PartyKeys,
    SecAggMessage,
    ServerMessage,
    ShareBundle,
    ShareDelivery,
    TensorLayout,
    UnmaskRequest,
    UnmaskResponse,
    parse_message,
)
from fedsilo.privacy.secagg._server import AggregateResult, SecAggServer
from fedsilo.privacy.secagg._updates import (
    MASKED_TENSOR,
    load_masked,
    mask_update,
    masked_parts,
)

__all__ = [
    "MASKED_TENSOR",
    "AdvertiseKeys",
    "AggregateResult",
    "ClientMessage",
    "FixedPointRangeError",
    "KeyRoster",
    "MaskedInput",
    "MaskedVector",
    "PartyKeys",
    "RoundMask",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggMessage",
    "SecAggProtocolError",
    "SecAggServer",
    "ServerMessage",
    "ShareBundle",
    "ShareDecryptionError",
    "ShareDelivery",
    "TensorLayout",
    "UnmaskRefused",
    "UnmaskRequest",
    "UnmaskResponse",
    "default_threshold",
    "load_masked",
    "mask_update",
    "masked_parts",
    "parse_message",
]
