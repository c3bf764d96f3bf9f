"""A silo's model update under secure aggregation: masked in the silo, a file on the wire.

The silo masks its update ``params - global`` (clipped to the central-DP norm when the job
has one) times its weight; only that masked vector leaves the silo. It travels as
safetensors bytes holding one uint64 tensor (``masked``) and, in the header's metadata,
the job, the sender, the round and the layout of the arrays it encodes, so the
orchestrator can add it to the round's sum as it arrives, without ever decoding it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _st_save

from fedsilo.privacy._clip import clipped_delta
from fedsilo.privacy.secagg._client import RoundMask, SecAggClient
from fedsilo.privacy.secagg._errors import SecAggProtocolError
from fedsilo.privacy.secagg._messages import MaskedInput, TensorLayout
from fedsilo.tensors import Parameters, save_parameters

__all__ = ["MASKED_TENSOR", "load_masked", "mask_update", "masked_bytes", "save_masked"]

MASKED_TENSOR = "masked"
_META_KEY = "fedsilo.secagg"


def mask_update(
    client: SecAggClient,
    round_: int,
    params: Parameters,
    current: Parameters,
    *,
    weight: float,
    clip_norm: float | None = None,
    mask: RoundMask | None = None,
) -> MaskedInput:
    """The masked ``weight * (params - current)`` of one silo for ``round_``.

    With ``clip_norm`` the update is first scaled down to that L2 norm (DP-FedAvg's
    clipping, which under secure aggregation only the silo can do). ``mask`` is the
    round's mask if it was computed ahead (:meth:`SecAggClient.round_mask`). Inputs are
    read, never modified; the plain update exists only in this silo's memory.
    """
    delta = clipped_delta(params, current, clip_norm, who=f"silo '{client.client_id}'")
    return client.masked_input(round_, delta, weight, mask=mask)


def _metadata(message: MaskedInput) -> dict[str, str]:
    header = {
        "job_id": message.job_id,
        "sender": message.sender,
        "round": message.round,
        "layout": [[t.name, list(t.shape)] for t in message.layout],
    }
    return {_META_KEY: json.dumps(header)}


def masked_bytes(message: MaskedInput) -> bytes:
    """A masked input as the bytes of a safetensors file, to upload without writing one."""
    return _st_save({MASKED_TENSOR: message.vector()}, metadata=_metadata(message))


def save_masked(message: MaskedInput, path: Path) -> str:
    """Write a masked input as a safetensors file; return the file's sha256."""
    return save_parameters({MASKED_TENSOR: message.vector()}, path, metadata=_metadata(message))


def load_masked(path: Path, *, job_id: str, sender: str, round_: int) -> MaskedInput:
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
            vector = fh.get_tensor(MASKED_TENSOR)
    except (SafetensorError, OSError, ValueError) as exc:
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
    if vector.dtype != np.uint64 or vector.ndim != 1:
        raise SecAggProtocolError(f"silo '{sender}' sent a masked update that is not uint64 words")
    return MaskedInput(
        job_id=job_id, sender=sender, round=round_, layout=layout, data=vector.tobytes()
    )
