"""The messages of secure aggregation: frozen pydantic models that travel as JSON.

Bytes travel as standard base64 strings. Messages a client sends go to the server and
carry ``sender``; messages the server sends carry ``recipient``, the client the
orchestrator must relay them to. ``kind`` tells them apart, so one JSON document parses
back into the right class with :func:`parse_message`. Nothing here is secret to the
server: shares travel encrypted end to end between clients.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from fedsilo.privacy.secagg._errors import SecAggProtocolError

__all__ = [
    "AdvertiseKeys",
    "ClientMessage",
    "KeyRoster",
    "MaskedInput",
    "PartyKeys",
    "SecAggMessage",
    "ServerMessage",
    "ShareBundle",
    "ShareDelivery",
    "TensorLayout",
    "UnmaskRequest",
    "UnmaskResponse",
    "parse_message",
]


def _from_base64(value: object) -> object:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not standard base64: {exc}") from exc
    return value


def _to_base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


B64Bytes = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    PlainSerializer(_to_base64, return_type=str, when_used="json"),
]
"""Raw bytes in Python, a base64 string in JSON."""

_Key = Annotated[B64Bytes, Field(min_length=32, max_length=32)]
_Round = Annotated[int, Field(ge=1)]
_Id = Annotated[str, Field(min_length=1, max_length=256)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: _Id


class PartyKeys(BaseModel):
    """One client's public keys: ``c`` for share encryption, one ``s`` per round for masks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: _Id
    c_public: _Key
    s_public: tuple[_Key, ...]


class TensorLayout(BaseModel):
    """Name and shape of one array of the input, in the order the vector holds them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: tuple[Annotated[int, Field(ge=0)], ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


class AdvertiseKeys(_Message):
    """Client → server, setup step 1: the client's public keys."""

    kind: Literal["advertise_keys"] = "advertise_keys"
    sender: _Id
    keys: PartyKeys

    @model_validator(mode="after")
    def _own_keys(self) -> AdvertiseKeys:
        if self.keys.client_id != self.sender:
            raise ValueError("a client advertises its own keys only")
        return self


class KeyRoster(_Message):
    """Server → each client, setup step 1: every advertised key set and the job's parameters."""

    kind: Literal["key_roster"] = "key_roster"
    recipient: _Id
    threshold: Annotated[int, Field(ge=2)]
    rounds: _Round
    bits: int
    keys: tuple[PartyKeys, ...]


class ShareBundle(_Message):
    """Client → server, setup step 2: one encrypted share blob per receiver (id → blob)."""

    kind: Literal["share_bundle"] = "share_bundle"
    sender: _Id
    ciphertexts: dict[str, B64Bytes]


class ShareDelivery(_Message):
    """Server → each client, setup step 2: the blobs made for it (sender id → blob).

    The senders listed are the clients that finished setup; only they take part in rounds.
    """

    kind: Literal["share_delivery"] = "share_delivery"
    recipient: _Id
    ciphertexts: dict[str, B64Bytes]


Words = npt.NDArray[np.unsignedinteger[Any]]
"""A masked vector: uint32 or uint64 words, as the round's plan says."""

_WORD_DTYPES: dict[int, np.dtype[Any]] = {32: np.dtype(np.uint32), 64: np.dtype(np.uint64)}


class MaskedInput(_Message):
    """Client → server, round step 3: the masked fixed-point vector (little-endian words).

    The last element is the client's weight; ``layout`` says how to reshape the rest.
    ``word_bits`` is the round's word size, 32 or 64.
    """

    kind: Literal["masked_input"] = "masked_input"
    sender: _Id
    round: _Round
    layout: tuple[TensorLayout, ...]
    word_bits: Literal[32, 64] = 64
    data: B64Bytes

    @model_validator(mode="after")
    def _length_matches_layout(self) -> MaskedInput:
        expected = self.word_bits // 8 * (sum(t.size for t in self.layout) + 1)
        if len(self.data) != expected:
            raise ValueError(f"data holds {len(self.data)} bytes, the layout needs {expected}")
        return self

    def vector(self) -> Words:
        """The masked vector as a read-only array of words (no copy)."""
        dtype = _WORD_DTYPES[self.word_bits]
        return np.frombuffer(self.data, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


@dataclass(frozen=True, eq=False)
class MaskedVector:
    """A :class:`MaskedInput` held as an array of words rather than bytes.

    What a silo uploads (as a safetensors file) and the orchestrator adds to the round's
    sum, without the copies a JSON message would need. :meth:`message` is the same input
    as a :class:`MaskedInput`.
    """

    job_id: str
    sender: str
    round: int
    layout: tuple[TensorLayout, ...]
    words: Words = field(repr=False)

    def __post_init__(self) -> None:
        expected = sum(t.size for t in self.layout) + 1
        if self.words.dtype not in _WORD_DTYPES.values() or self.words.shape != (expected,):
            raise SecAggProtocolError(
                f"'{self.sender}' sent {self.words.dtype} words of shape {self.words.shape}; "
                f"the layout needs {expected} uint32 or uint64 words"
            )

    @property
    def word_bits(self) -> int:
        """The size of each word: 32 or 64 bits."""
        return 8 * self.words.dtype.itemsize

    def vector(self) -> Words:
        """The masked vector (no copy)."""
        return self.words

    def message(self) -> MaskedInput:
        """The same input as a JSON-ready :class:`MaskedInput`."""
        return MaskedInput(
            job_id=self.job_id,
            sender=self.sender,
            round=self.round,
            layout=self.layout,
            word_bits=32 if self.word_bits == 32 else 64,
            data=self.words.astype(self.words.dtype.newbyteorder("<"), copy=False).tobytes(),
        )


class UnmaskRequest(_Message):
    """Server → each survivor, round step 5: who sent a masked input and who dropped."""

    kind: Literal["unmask_request"] = "unmask_request"
    recipient: _Id
    round: _Round
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


class UnmaskResponse(_Message):
    """Client → server, round step 5: its shares of ``b`` (survivors) and ``s`` (dropped)."""

    kind: Literal["unmask_response"] = "unmask_response"
    sender: _Id
    round: _Round
    b_shares: dict[str, B64Bytes]
    s_shares: dict[str, B64Bytes]


ClientMessage = Annotated[
    AdvertiseKeys | ShareBundle | MaskedInput | UnmaskResponse, Field(discriminator="kind")
]
"""What a client sends (to the server)."""
ServerMessage = Annotated[KeyRoster | ShareDelivery | UnmaskRequest, Field(discriminator="kind")]
"""What the server sends (to ``recipient``)."""
SecAggMessage = Annotated[
    AdvertiseKeys
    | KeyRoster
    | ShareBundle
    | ShareDelivery
    | MaskedInput
    | UnmaskRequest
    | UnmaskResponse,
    Field(discriminator="kind"),
]
"""Any secure-aggregation message."""

_ADAPTER: TypeAdapter[SecAggMessage] = TypeAdapter(SecAggMessage)


def parse_message(data: str | bytes) -> SecAggMessage:
    """Parse one JSON message into its class (the inverse of ``model_dump_json``).

    Anything else raises :class:`SecAggProtocolError` naming what is wrong.
    """
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise SecAggProtocolError(f"not a secure-aggregation message: {exc}") from exc
