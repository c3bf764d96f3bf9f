"""FedAvg: the weighted mean of the silos' parameters, accumulated as results arrive."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError
from fedsilo.jobs import StrategySpec, Weighting
from fedsilo.tensors import Parameters

__all__ = ["FedAvg"]

_WeightFn = Callable[[str, int], float]


class FedAvg:
    """Federated averaging (McMahan et al. 2017).

    Each silo's parameters are weighted by its number of training samples
    (``Weighting.SAMPLES``, the default), equally (``UNIFORM``), or by an explicit weight
    per silo (``EXPLICIT``). Sums run in float64 and are cast back to each tensor's dtype;
    integer tensors are rounded.
    """

    def __init__(
        self,
        *,
        weighting: Weighting = Weighting.SAMPLES,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if weighting is Weighting.EXPLICIT and not weights:
            raise AggregationError("explicit weighting needs a weight for every silo")
        self.weighting = weighting
        self.weights = dict(weights or {})

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> FedAvg:
        """Build from a job spec's ``strategy`` section."""
        return cls(weighting=spec.weighting, weights=spec.weights)

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """FedAvg sends no per-silo configuration beyond the job's hyperparameters."""
        return {silo: {} for silo in silos}

    def begin_aggregation(self, round_: int, current: Parameters | None) -> _WeightedMean:
        """A fresh streaming weighted mean for this round."""
        return _WeightedMean(self._weight)

    def _weight(self, silo: str, num_samples: int) -> float:
        if self.weighting is Weighting.SAMPLES:
            return float(num_samples)
        if self.weighting is Weighting.UNIFORM:
            return 1.0
        if silo not in self.weights:
            raise AggregationError(f"no explicit weight for silo '{silo}'")
        return float(self.weights[silo])


class _WeightedMean:
    """Running weighted sum in float64: memory is one model, whatever the silo count."""

    def __init__(self, weight_of: _WeightFn) -> None:
        self._weight_of = weight_of
        self._sums: dict[str, npt.NDArray[np.float64]] = {}
        self._dtypes: dict[str, np.dtype[np.generic]] = {}
        self._total = 0.0
        self._silos: list[str] = []

    def add(self, silo: str, params: Parameters, num_samples: int) -> None:
        if silo in self._silos:
            raise AggregationError(f"silo '{silo}' sent two results for one round")
        weight = self._weight_of(silo, num_samples)
        if self._sums and set(params) != set(self._sums):
            raise AggregationError(
                f"silo '{silo}' sent tensors {sorted(set(params) ^ set(self._sums))} "
                "that the other silos do not have"
            )
        arrays = {name: np.asarray(value) for name, value in params.items()}
        for name, arr in arrays.items():  # check everything before touching the sums
            acc = self._sums.get(name)
            if acc is not None and acc.shape != arr.shape:
                raise AggregationError(
                    f"silo '{silo}' sent tensor '{name}' of shape {arr.shape}, expected {acc.shape}"
                )
        for name, arr in arrays.items():
            acc = self._sums.get(name)
            if acc is None:
                acc = np.zeros(arr.shape, dtype=np.float64)
                self._sums[name] = acc
                self._dtypes[name] = arr.dtype
            acc += weight * arr.astype(np.float64, copy=False)
        self._total += weight
        self._silos.append(silo)

    def finish(self, failures: Sequence[str] = ()) -> dict[str, npt.NDArray[np.generic]]:
        if failures:
            raise AggregationError(
                f"FedAvg needs every silo's result; missing: {', '.join(sorted(failures))}"
            )
        if not self._silos:
            raise AggregationError("no silo sent a result to aggregate")
        if self._total <= 0:
            raise AggregationError("the silos' weights sum to zero; nothing to average")
        out: dict[str, npt.NDArray[np.generic]] = {}
        for name, acc in self._sums.items():
            mean = acc / self._total
            dtype = self._dtypes[name]
            if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
                mean = np.rint(mean)
            out[name] = mean.astype(dtype)
        return out
