"""Fixed-point encoding of weighted float arrays into 32- or 64-bit words, and back.

A client sends ``w * x`` and ``w``: each value ``v`` becomes ``round(v * 2**bits)`` as a
two's-complement integer viewed as unsigned, so additions modulo ``2**L`` (``L`` the word
size, 32 or 64) are additions of the signed values as long as the true sum stays within
``±2**(L-1)``. To guarantee that without knowing the other clients' data, every value of
``x`` is clipped to ``±clip_range``, and each client checks a bound on its weight before
it encodes anything:

- by default, an equal share of the range, whatever the others' weights:
  ``parties * (|w| * max(clip_range, 1) * 2**bits + 1) < 2**(L-1)``;
- with a ``limit`` from the round's :class:`~fedsilo.privacy.MaskPlan`, ``w <= limit``:
  the orchestrator chose the limits so that their sum times ``max(clip_range, 1) *
  2**bits``, plus one rounding unit per party, stays below ``2**(L-1)``.

A raw sample count of 10**9 fails the first bound at 64 bits; normalised weights (each
silo's share of the total, which the plan's ``weight_scale`` gives) pass both, and fit
32-bit words at the default 24 bits and clip range 64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.privacy.secagg._errors import FixedPointRangeError, SecAggError
from fedsilo.privacy.secagg._messages import TensorLayout, Words

__all__ = ["check_range", "decode", "encode"]

_TOP = {32: 2**31, 64: 2**63}  # the signed range of each word size
_SIGNED: dict[np.dtype[Any], type[np.signedinteger[Any]]] = {
    np.dtype(np.uint32): np.int32,
    np.dtype(np.uint64): np.int64,
}

Arrays = Mapping[str, npt.NDArray[np.generic]]  # real-number dtypes, checked at run time


def check_range(
    *,
    weight: float,
    bits: int,
    clip_range: float,
    parties: int,
    word_bits: int = 64,
    limit: float | None = None,
) -> None:
    """Raise :class:`FixedPointRangeError` unless ``parties`` such inputs cannot overflow.

    ``limit`` is the largest weight the round's plan lets this client use; without one
    the client keeps to an equal share of the range (see the module's docstring).
    """
    if not math.isfinite(weight) or weight < 0:
        raise FixedPointRangeError(f"the weight must be a finite number >= 0, not {weight}")
    if word_bits not in _TOP:
        raise FixedPointRangeError(f"words are 32 or 64 bits, not {word_bits}")
    top = _TOP[word_bits]
    unit = max(clip_range, 1.0) * 2.0**bits  # the largest code of one value at weight 1
    if limit is not None:
        if weight > limit:
            raise FixedPointRangeError(
                f"the weight {weight:g} is above the limit {limit:g} that the round's plan "
                "sets for this silo: the orchestrator plans a round from the weights the "
                "silos reported before, and this silo's weight grew too much since. Its "
                "sum with the other silos' could overflow, so the silo sends no input"
            )
        if limit * unit + parties >= top:
            raise FixedPointRangeError(
                f"the round's plan lets this silo use weight {limit:g}, which alone overflows "
                f"{word_bits}-bit words at {bits} fixed-point bits and clip_range {clip_range:g}"
            )
        return
    if parties * (weight * unit + 1.0) >= top:
        raise FixedPointRangeError(
            f"weight {weight:g} is too large for {parties} parties at {bits} fixed-point bits "
            f"and clip_range {clip_range:g}: {parties} * weight * max(clip_range, 1) * "
            f"2**{bits} must stay below 2**{word_bits - 1}. Normalise the weights (e.g. divide "
            "each silo's sample count by a public constant such as the expected total), or "
            "lower bits or clip_range"
        )


def encode(
    arrays: Arrays,
    weight: float,
    *,
    bits: int,
    clip_range: float,
    parties: int,
    base: Arrays | None = None,
    scale: float = 1.0,
    word_bits: int = 64,
    limit: float | None = None,
) -> tuple[tuple[TensorLayout, ...], Words]:
    """Encode ``weight * clip(x)`` then ``weight`` as one vector of ``word_bits``-bit words.

    ``x`` is each array, or with ``base`` the difference ``scale * (array - base[name])``
    (a silo's update, computed here in one pass rather than in a float64 copy first).
    Arrays are flattened in sorted name order; the layout records names and shapes so the
    server can rebuild the same dictionary from the sum.
    """
    check_range(
        weight=weight,
        bits=bits,
        clip_range=clip_range,
        parties=parties,
        word_bits=word_bits,
        limit=limit,
    )
    names = sorted(arrays)
    layout = []
    total = 0
    for name in names:
        array = np.asarray(arrays[name])
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise SecAggError(f"array '{name}' has dtype {array.dtype}, not a real number type")
        layout.append(TensorLayout(name=name, shape=tuple(int(d) for d in array.shape)))
        total += array.size
    scaled = np.empty(total + 1, dtype=np.float64)
    start = 0
    for name in names:
        array = np.asarray(arrays[name]).ravel()
        part = scaled[start : start + array.size]
        if base is None:
            part[...] = array
        else:
            np.subtract(array, np.asarray(base[name]).ravel(), out=part, dtype=np.float64)
            if scale != 1.0:
                part *= scale
        if part.size and np.isnan(np.min(part)):  # min propagates NaN, without a mask array
            raise FixedPointRangeError(f"array '{name}' holds NaN, which has no fixed-point code")
        start += array.size
    values = scaled[:-1]
    np.clip(values, -clip_range, clip_range, out=values)
    factor = 2.0**bits
    values *= weight * factor
    scaled[-1] = weight * factor
    np.rint(scaled, out=scaled)
    words = scaled.view(np.int64)
    np.copyto(words, scaled, casting="unsafe")  # in place: each value to its own int64
    if word_bits == 32:  # each code fits 32 bits (the check above): keep the low half
        return tuple(layout), words.astype(np.uint32)
    return tuple(layout), words.view(np.uint64)


def decode(
    vector: Words,
    layout: tuple[TensorLayout, ...],
    *,
    bits: int,
    weight_scale: float = 1.0,
) -> tuple[dict[str, npt.NDArray[np.float64]], float]:
    """The inverse of :func:`encode` applied to a sum: ``({name: sum(w*x)}, sum(w))``.

    ``weight_scale`` is the factor every client multiplied its weight by (the round's
    plan); it is divided out, so the result is in the weights' own units.
    """
    signed = _SIGNED.get(vector.dtype)
    if signed is None:
        raise SecAggError(f"a sum of {vector.dtype} words has no fixed-point decoding")
    values = vector.view(signed).astype(np.float64)
    values /= 2.0**bits * weight_scale
    arrays: dict[str, npt.NDArray[np.float64]] = {}
    start = 0
    for tensor in layout:
        arrays[tensor.name] = values[start : start + tensor.size].reshape(tensor.shape)
        start += tensor.size
    return arrays, float(values[-1])
