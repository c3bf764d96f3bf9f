"""Fixed-point encoding of weighted float arrays into uint64 words, and back.

A client sends ``w * x`` and ``w``: each value ``v`` becomes ``round(v * 2**bits)`` as a
two's-complement int64 viewed as uint64, so additions modulo ``2**64`` are additions of
the signed values as long as the true sum stays within ``±2**63``. To guarantee that
without knowing the other clients' data, every value of ``x`` is clipped to
``±clip_range`` and each client checks the data-independent bound

    parties * (|w| * max(clip_range, 1) * 2**bits + 1) < 2**63

before it encodes anything. A weight that fails it (say a raw sample count of 10**9)
must be normalised by the caller first, e.g. divided by a public constant such as the
expected total number of samples: the weighted mean ``sum(w*x) / sum(w)`` is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fedsilo.privacy.secagg._errors import FixedPointRangeError, SecAggError
from fedsilo.privacy.secagg._messages import TensorLayout

__all__ = ["check_range", "decode", "encode"]

_LIMIT = 2**63

Arrays = Mapping[str, npt.NDArray[np.generic]]  # real-number dtypes, checked at run time


def check_range(*, weight: float, bits: int, clip_range: float, parties: int) -> None:
    """Raise :class:`FixedPointRangeError` unless ``parties`` such inputs cannot overflow."""
    if not math.isfinite(weight) or weight < 0:
        raise FixedPointRangeError(f"the weight must be a finite number >= 0, not {weight}")
    largest = weight * max(clip_range, 1.0) * 2.0**bits + 1.0
    if parties * largest >= _LIMIT:
        raise FixedPointRangeError(
            f"weight {weight:g} is too large for {parties} parties at {bits} fixed-point bits "
            f"and clip_range {clip_range:g}: {parties} * weight * max(clip_range, 1) * "
            f"2**{bits} must stay below 2**63. Normalise the weights (e.g. divide each silo's "
            "sample count by a public constant such as the expected total), or lower bits "
            "or clip_range"
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
) -> tuple[tuple[TensorLayout, ...], npt.NDArray[np.uint64]]:
    """Encode ``weight * clip(x)`` then ``weight`` as one uint64 vector.

    ``x`` is each array, or with ``base`` the difference ``scale * (array - base[name])``
    (a silo's update, computed here in one pass rather than in a float64 copy first).
    Arrays are flattened in sorted name order; the layout records names and shapes so the
    server can rebuild the same dictionary from the sum.
    """
    check_range(weight=weight, bits=bits, clip_range=clip_range, parties=parties)
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
    return tuple(layout), words.view(np.uint64)


def decode(
    vector: npt.NDArray[np.uint64], layout: tuple[TensorLayout, ...], *, bits: int
) -> tuple[dict[str, npt.NDArray[np.float64]], float]:
    """The inverse of :func:`encode` applied to a sum: ``({name: sum(w*x)}, sum(w))``."""
    values = vector.view(np.int64).astype(np.float64) / 2.0**bits
    arrays: dict[str, npt.NDArray[np.float64]] = {}
    start = 0
    for tensor in layout:
        arrays[tensor.name] = values[start : start + tensor.size].reshape(tensor.shape)
        start += tensor.size
    return arrays, float(values[-1])
