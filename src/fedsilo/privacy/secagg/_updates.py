"""A silo's model update under secure aggregation: masked in the silo, a file on the wire.

The silo masks its update ``params - global`` (clipped to the central-DP norm when the job
has one) times its weight; only that masked vector leaves the silo. It travels as
safetensors bytes holding one tensor of words (``masked``: uint32 or uint64, as the
round's :class:`~fedsilo.privacy.MaskPlan` says) and, in the header's metadata, the job,
the sender, the round and the layout of the arrays it encodes, so the orchestrator can
add it to the round's sum as it arrives, without ever decoding it.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from fedsilo.privacy._clip import update_scale
from fedsilo.privacy._spec import MaskPlan
from fedsilo.privacy.secagg._client import RoundMask, SecAggClient
from fedsilo.privacy.secagg._errors import SecAggProtocolError
from fedsilo.privacy.secagg._messages import MaskedInput, MaskedVector, TensorLayout, Words
from fedsilo.tensors import Parameters

__all__ = [
    "MASKED_TENSOR",
    "load_masked",
    "mask_update",
    "masked_parts",
]

MASKED_TENSOR = "masked"
_META_KEY = "fedsilo.secagg"
_DTYPES: dict[str, np.dtype[Any]] = {"U32": np.dtype("<u4"), "U64": np.dtype("<u8")}


def mask_update(
    client: SecAggClient,
    round_: int,
    params: Parameters,
    current: Parameters,
    *,
    weight: float,
    clip_norm: float | None = None,
    mask: RoundMask | None = None,
    plan: MaskPlan | None = None,
) -> MaskedVector:
    """The masked ``weight * (params - current)`` of one silo for ``round_``.

    With ``clip_norm`` the update is first scaled down to that L2 norm (DP-FedAvg's
    clipping, which under secure aggregation only the silo can do). ``plan`` is the
    round's encoding; ``mask`` the round's mask if it was computed ahead
    (:meth:`SecAggClient.round_mask`). Inputs are read, never modified; the plain update
    exists only in this silo's memory.
    """
    scale = update_scale(params, current, clip_norm, f"silo '{client.client_id}'")
    return client.masked_vector(
        round_, params, weight, base=current, scale=scale, mask=mask, plan=plan
    )


def masked_parts(masked: MaskedInput | MaskedVector) -> tuple[bytes, memoryview]:
    """A masked input as a safetensors file in two parts: the header, then the words.

    Joined, they are the file; apart, the words are sent without being copied. The header
    names the job, the sender, the round and the layout of the arrays the vector encodes.
    """
    words = masked.vector()
    if sys.byteorder != "little":
        words = words.astype(words.dtype.newbyteorder("<"))
    meta = {
        "job_id": masked.job_id,
        "sender": masked.sender,
        "round": masked.round,
        "layout": [[t.name, list(t.shape)] for t in masked.layout],
    }
    header = {
        "__metadata__": {_META_KEY: json.dumps(meta)},
        MASKED_TENSOR: {
            "dtype": f"U{8 * words.dtype.itemsize}",
            "shape": [int(words.size)],
            "data_offsets": [0, int(words.nbytes)],
        },
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text, words.data.cast("B")


def _map_words(path: Path) -> Words:
    """The masked words of a safetensors file safetensors has checked, mapped, not copied.

    Adding a mapped file to the round's sum reads it from the page cache once, where a
    copy would first fault in a fresh buffer as large as the update.
    """
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        entry = json.loads(fh.read(length))[MASKED_TENSOR]
    begin, end = entry["data_offsets"]
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None or end - begin != dtype.itemsize * math.prod(entry["shape"]):
        raise ValueError(
            f"the masked tensor is {entry['dtype']} {entry['shape']}, not uint32 or uint64 words"
        )
    if end == begin:
        return np.zeros(0, dtype=dtype.newbyteorder("="))
    count = (end - begin) // dtype.itemsize
    words: Words = np.memmap(path, dtype=dtype, mode="r", offset=8 + length + begin, shape=count)
    return words


def load_masked(path: Path, *, job_id: str, sender: str, round_: int) -> MaskedVector:
    """Read a masked input that ``sender`` uploaded for ``round_`` of ``job_id``.

    Anything else (plain parameters, another round's or another silo's masked vector)
    raises :class:`SecAggProtocolError` naming the silo: under secure aggregation the
    orchestrator accepts nothing but masked vectors.
    """
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = (fh.metadata() or {}).get(_META_KEY)
            names = list(fh.keys())
            if meta is None or names != [MASKED_TENSOR]:
                raise SecAggProtocolError(
                    f"silo '{sender}' sent an update that is not masked (tensors "
                    f"{names[:3]}); under secure aggregation only masked vectors are accepted"
                )
            vector = _map_words(path)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise SecAggProtocolError(
            f"silo '{sender}' sent an unreadable masked update: {exc}"
        ) from exc
    try:
        header = json.loads(meta)
        layout = tuple(TensorLayout(name=n, shape=tuple(s)) for n, s in header["layout"])
        claimed = (header["job_id"], header["sender"], int(header["round"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SecAggProtocolError(
            f"silo '{sender}' sent a masked update with a malformed header: {exc}"
        ) from exc
    if claimed != (job_id, sender, round_):
        raise SecAggProtocolError(
            f"silo '{sender}' sent the masked update of job {claimed[0]}, silo '{claimed[1]}', "
            f"round {claimed[2]} for round {round_} of job {job_id}"
        )
    if vector.dtype not in (np.uint32, np.uint64) or vector.ndim != 1:
        raise SecAggProtocolError(
            f"silo '{sender}' sent a masked update that is not uint32 or uint64 words"
        )
    return MaskedVector(job_id=job_id, sender=sender, round=round_, layout=layout, words=vector)
