"""Clipping a silo's update to an L2 norm: numpy only, so silo agents can use it.

DP-FedAvg bounds each silo's influence by clipping its update ``params - current`` to
``clip_norm`` over all its tensors together. Without secure aggregation the orchestrator
clips (:mod:`fedsilo.privacy._central`); with it, only the silo sees its own update, so the
silo clips before it masks (:mod:`fedsilo.privacy.secagg`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError
from fedsilo.tensors import Parameters

__all__ = [
    "cast_like",
    "check_like",
    "clip_scale",
    "clip_update",
    "clipped_delta",
    "delta_norm",
    "norm_of_delta",
    "update_scale",
]

Arrays = dict[str, npt.NDArray[np.generic]]


def norm_of_delta(
    read: Callable[[str], npt.NDArray[np.generic]], current: Parameters, who: str
) -> float:
    """L2 norm of the update ``read(name) - current[name]`` over all tensors, one at a time."""
    total = 0.0
    for name, base in current.items():
        diff = np.asarray(read(name), dtype=np.float64) - np.asarray(base, dtype=np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    norm = math.sqrt(total)
    if not math.isfinite(norm):
        raise AggregationError(f"{who} sent an update that is not finite")
    return norm


def delta_norm(params: Parameters, current: Parameters, who: str) -> float:
    """L2 norm of in-memory ``params - current``, after checking names and shapes."""
    check_like(params, current, who)
    return norm_of_delta(lambda name: np.asarray(params[name]), current, who)


def check_like(params: Parameters, current: Parameters, who: str) -> None:
    """Refuse ``params`` unless it has exactly ``current``'s tensor names and shapes."""
    if set(params) != set(current):
        raise AggregationError(
            f"{who} sent tensors {sorted(set(params) ^ set(current))} that the global model "
            "does not have (or lacks tensors it has)"
        )
    for name, base in current.items():
        if np.shape(params[name]) != np.shape(base):
            raise AggregationError(
                f"{who} sent tensor '{name}' of shape {np.shape(params[name])}, "
                f"expected {np.shape(base)}"
            )


def clip_scale(norm: float, clip_norm: float) -> float:
    """The factor that brings an update of L2 norm ``norm`` down to at most ``clip_norm``."""
    return 1.0 if norm <= clip_norm else clip_norm / norm


def update_scale(
    params: Parameters, current: Parameters, clip_norm: float | None, who: str
) -> float:
    """The factor that clips the update ``params - current`` to ``clip_norm`` (1 for None).

    Names and shapes are checked either way.
    """
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    if clip_norm is None:
        check_like(params, current, who)
        return 1.0
    return clip_scale(delta_norm(params, current, who), clip_norm)


def clipped_delta(
    params: Parameters, current: Parameters, clip_norm: float | None, *, who: str = "the silo"
) -> dict[str, npt.NDArray[np.float64]]:
    """A silo's update ``params - current`` in float64, scaled down to ``clip_norm`` if larger.

    ``clip_norm`` ``None`` leaves the update as it is (the names and shapes are still
    checked). Inputs are read, never modified.
    """
    scale = update_scale(params, current, clip_norm, who)
    delta = {}
    for name, base in current.items():
        diff = np.subtract(params[name], base, dtype=np.float64)
        if scale != 1.0:
            diff *= scale
        delta[name] = diff
    return delta


def cast_like(
    values: npt.NDArray[np.float64], dtype: np.dtype[np.generic]
) -> npt.NDArray[np.generic]:
    """``values`` in ``dtype``; integer and boolean tensors are rounded to nearest first."""
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
        values = np.rint(values)
    return values.astype(dtype)


def clip_update(params: Parameters, current: Parameters, clip_norm: float) -> Arrays:
    """``current`` plus the clipped update, in each tensor's dtype: parameters to send."""
    delta = clipped_delta(params, current, clip_norm)
    return {
        name: cast_like(np.asarray(base, dtype=np.float64) + delta[name], np.asarray(base).dtype)
        for name, base in current.items()
    }
