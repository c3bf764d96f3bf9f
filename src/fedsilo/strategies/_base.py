"""The strategy interface: configure a round, aggregate its results. No mutation of inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedsilo.tensors import Parameters

__all__ = ["Aggregation", "MeanStrategy", "Strategy", "weighted_metrics"]


class Aggregation(Protocol):
    """One round's aggregation, fed silo by silo as results arrive.

    The FedAvg family keeps memory proportional to the model, never to the number of
    silos; robust aggregators (median, trimmed mean, Krum) must keep every silo's
    parameters until :meth:`finish`, which is inherent to what they compute.
    """

    def add(self, silo: str, params: Parameters | Path, num_samples: int) -> None:
        """Fold in one silo's parameters, given in memory or as a safetensors file.

        In-memory ``params`` are read, never modified or kept by reference; a file is read
        one tensor at a time, so only one tensor of the update is in memory at once.
        A refused result (a second one from a silo, tensors that do not match) raises
        :class:`~fedsilo.errors.AggregationError` and leaves the aggregation unchanged.
        """
        ...

    def finish(self, failures: Sequence[str] = ()) -> dict[str, npt.NDArray[np.generic]]:
        """The aggregated parameters; ``failures`` names silos whose result never came."""
        ...


class Strategy(Protocol):
    """A federated strategy: per-round configuration and aggregation."""

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """Per-silo configuration sent with the round's task (may be empty)."""
        ...

    def begin_aggregation(self, round_: int, current: Parameters | None) -> Aggregation:
        """A fresh aggregation for ``round_``, given the current global parameters.

        ``current`` is read, never modified; strategies that need it (server optimizers)
        raise :class:`~fedsilo.errors.AggregationError` when it is ``None``.
        """
        ...


@runtime_checkable
class MeanStrategy(Strategy, Protocol):
    """A strategy that needs only the weighted mean of the silos' parameters.

    The FedAvg family (FedAvg, FedProx, the FedOpt server optimizers) computes the next
    global model from ``sum(w_i * x_i) / sum(w_i)`` alone, so it also runs under secure
    aggregation, where the orchestrator learns that sum and nothing about any one silo.
    Robust aggregators (median, trimmed mean, Krum) look at every update and cannot.
    """

    def silo_weight(self, silo: str) -> float | None:
        """The weight of ``silo`` in the mean; ``None``: its round's ``num_samples``."""
        ...

    def from_mean(
        self, round_: int, current: Parameters, mean: Mapping[str, npt.NDArray[np.floating]]
    ) -> dict[str, npt.NDArray[np.generic]]:
        """The new global parameters, given the round's weighted mean of parameters.

        ``current`` is read, never modified; ``mean`` (float arrays with ``current``'s names
        and shapes) may be overwritten. Keeps each tensor's dtype, rounding integers.
        """
        ...


def weighted_metrics(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Sample-weighted mean of each metric over silos (``num_samples`` is summed).

    Every result is finite, whatever finite numbers the silos sent: each silo's weight is
    taken relative to the largest and the mean built as a sum of ``value * share`` with
    shares that add up to one, so it never overflows where the plain ``sum(v * w) / sum(w)``
    would (two silos reporting ``1.5e308``); a sum of sample counts too large for a float
    is capped at the largest one. A value that is not a finite number is left out of its
    metric's mean, and a count that is not finite and at least zero counts as zero.
    """
    counts = {silo: _count(m.get("num_samples", 0)) for silo, m in results.items()}
    keys = sorted({k for m in results.values() for k in m if k != "num_samples"})
    out: dict[str, float] = {}
    for key in keys:
        pairs = [
            (float(m[key]), counts[silo])
            for silo, m in results.items()
            if key in m and _finite(m[key])
        ]
        if pairs:
            out[key] = _mean(pairs)
    out["num_samples"] = _capped(sum(counts.values()))
    return out


_FLOAT_MAX = float(np.finfo(np.float64).max)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _count(value: object) -> float:
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return 0.0


def _capped(value: float) -> float:
    return max(-_FLOAT_MAX, min(_FLOAT_MAX, value))


def _mean(pairs: Sequence[tuple[float, float]]) -> float:
    """The weighted mean of ``(value, weight)`` pairs; a plain mean when no weight is positive."""
    top = max(w for _, w in pairs)
    weights = [w / top for _, w in pairs] if top > 0 else [1.0] * len(pairs)
    total = sum(weights)  # at least 1 (the largest weight) and at most len(pairs)
    mean = sum(v * (w / total) for (v, _), w in zip(pairs, weights, strict=True))
    # a mean lies between its values; rounding (subnormal values halved to zero, say) may
    # not, so it is put back between them
    values = [v for v, _ in pairs]
    return _capped(min(max(values), max(min(values), mean)))
