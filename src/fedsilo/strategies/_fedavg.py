"""FedAvg and FedProx: the weighted mean of the silos' parameters, accumulated as they arrive.

The running sum is one model in size, whatever the number of silos: float32 tensors are
summed in float32 (a float64 sum alone would be twice a float32 model), float64 and
integer tensors in float64. Each update is folded in chunk by chunk through one small
scratch buffer, so adding a silo allocates nothing the size of a tensor, and a file is
read one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError
from fedsilo.strategies._specs import FedAvgSpec, FedProxSpec, StrategySpec, Weighting
from fedsilo.strategies._updates import Layout, TensorInfo, check_layout, open_update
from fedsilo.tensors import Parameters

__all__ = ["FedAvg", "FedProx", "WeightedMean", "cast_back"]

WeightFn = Callable[[str, int], float]
Arrays = dict[str, npt.NDArray[np.generic]]

# Elements per step of the in-place multiply-add: 512 KiB of float32, small enough for the
# scratch buffer to stay in cache, large enough that numpy's per-call cost is negligible
# (measured on the project's machine: 1 << 17 to 1 << 18 are the fastest).
_CHUNK = 1 << 17


class FedAvg:
    """Federated averaging (McMahan et al. 2017).

    Each silo's parameters are weighted by its number of training samples
    (``Weighting.SAMPLES``, the default), equally (``UNIFORM``), or by an explicit weight
    per silo (``EXPLICIT``). Results keep each tensor's dtype; integer tensors are rounded.
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
    def from_spec(cls, spec: StrategySpec) -> Self:
        """Build from a job spec's ``strategy`` section (a :class:`FedAvgSpec`)."""
        if not isinstance(spec, FedAvgSpec):
            raise TypeError(f"FedAvg is built from a FedAvgSpec, not {type(spec).__name__}")
        return cls(weighting=spec.weighting, weights=spec.weights)

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """FedAvg sends no per-silo configuration beyond the job's hyperparameters."""
        return {silo: {} for silo in silos}

    def begin_aggregation(self, round_: int, current: Parameters | None) -> WeightedMean:
        """A fresh streaming weighted mean for this round."""
        return WeightedMean("FedAvg", self.weight)

    def silo_weight(self, silo: str) -> float | None:
        """The weight of ``silo`` (``None`` when it is the round's ``num_samples``)."""
        if self.weighting is Weighting.SAMPLES:
            return None
        return self.weight(silo, 0)

    def from_mean(
        self, round_: int, current: Parameters, mean: Mapping[str, npt.NDArray[np.floating]]
    ) -> Arrays:
        """The weighted mean itself, in each tensor's dtype: FedAvg's new global model."""
        return {
            name: cast_back(mean[name], np.asarray(base).dtype) for name, base in current.items()
        }

    def weight(self, silo: str, num_samples: int) -> float:
        """The weight of ``silo``'s parameters in the mean."""
        if self.weighting is Weighting.SAMPLES:
            return float(num_samples)
        if self.weighting is Weighting.UNIFORM:
            return 1.0
        if silo not in self.weights:
            raise AggregationError(f"no explicit weight for silo '{silo}'")
        return float(self.weights[silo])


class FedProx:
    """FedProx (Li et al. 2020): FedAvg on the server, a proximal term in every silo.

    The server side is exactly FedAvg; each round tells every silo its ``proximal_mu``,
    and the silo adds ``proximal_mu / 2 · ‖w - w_global‖²`` to its local loss.
    """

    def __init__(
        self,
        *,
        proximal_mu: float = 0.01,
        weighting: Weighting = Weighting.SAMPLES,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if not proximal_mu > 0:
            raise AggregationError(f"proximal_mu must be > 0, not {proximal_mu}")
        self.proximal_mu = float(proximal_mu)
        self._fedavg = FedAvg(weighting=weighting, weights=weights)

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Self:
        """Build from a job spec's ``strategy`` section (a :class:`FedProxSpec`)."""
        if not isinstance(spec, FedProxSpec):
            raise TypeError(f"FedProx is built from a FedProxSpec, not {type(spec).__name__}")
        return cls(proximal_mu=spec.proximal_mu, weighting=spec.weighting, weights=spec.weights)

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """Every silo gets ``{"proximal_mu": mu}``."""
        return {silo: {"proximal_mu": self.proximal_mu} for silo in silos}

    def begin_aggregation(self, round_: int, current: Parameters | None) -> WeightedMean:
        """A fresh streaming weighted mean for this round, as in FedAvg."""
        return WeightedMean("FedProx", self._fedavg.weight)

    def silo_weight(self, silo: str) -> float | None:
        """As in FedAvg."""
        return self._fedavg.silo_weight(silo)

    def from_mean(
        self, round_: int, current: Parameters, mean: Mapping[str, npt.NDArray[np.floating]]
    ) -> Arrays:
        """As in FedAvg: the weighted mean is the new global model."""
        return self._fedavg.from_mean(round_, current, mean)


def accumulator_dtype(dtype: np.dtype[np.generic]) -> np.dtype[np.floating]:
    """float32 for float16/float32 tensors, float64 for everything else (integers too)."""
    if dtype.kind == "f" and dtype.itemsize <= 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def cast_back(mean: npt.NDArray[np.floating], dtype: np.dtype[np.generic]) -> npt.NDArray[Any]:
    """``mean`` in the tensor's own dtype: integers and bools rounded to nearest."""
    if mean.dtype == dtype:
        return mean
    if dtype.kind in "biu":
        np.rint(mean, out=mean)
    return mean.astype(dtype)


class WeightedMean:
    """A running weighted sum, one model in size, whatever the number of silos.

    ``expected`` fixes the tensors every silo must send (the current global model's, for a
    server optimizer); without it, the first silo's tensors set them.
    """

    def __init__(self, label: str, weight_of: WeightFn, expected: Layout | None = None) -> None:
        self._label = label
        self._weight_of = weight_of
        self._layout: Layout | None = dict(expected) if expected is not None else None
        self._sums: dict[str, npt.NDArray[np.floating]] = {}
        self._scratch: dict[np.dtype[np.floating], npt.NDArray[np.floating]] = {}
        self._total = 0.0
        self._silos: set[str] = set()
        self._broken: str | None = None
        self._finished = False

    def add(self, silo: str, params: Parameters | Path, num_samples: int) -> None:
        """Fold in one silo's parameters (see :meth:`Aggregation.add`)."""
        self._check_open()
        if silo in self._silos:
            raise AggregationError(f"silo '{silo}' sent two results for one round")
        weight = self._weight_of(silo, num_samples)
        with open_update(silo, params) as update:
            if self._layout is None:
                self._layout = dict(update.layout)
            check_layout(update, self._layout)
            folded = 0
            try:
                for name in update.layout:
                    self._fold(name, update.tensor(name), weight)
                    folded += 1
            except BaseException as exc:
                if folded:  # the sums hold part of this silo: no mean can be trusted now
                    self._broken = f"silo '{silo}' failed half-way through its update: {exc}"
                raise
        self._total += weight
        self._silos.add(silo)

    def finish(self, failures: Sequence[str] = ()) -> dict[str, npt.NDArray[np.generic]]:
        """The weighted mean, each tensor in its own dtype (see :meth:`Aggregation.finish`)."""
        means = self.finish_raw(failures)
        layout = self._layout or {}
        return {name: cast_back(mean, layout[name].dtype) for name, mean in means.items()}

    def finish_raw(self, failures: Sequence[str] = ()) -> dict[str, npt.NDArray[np.floating]]:
        """The weighted mean in the accumulators' dtypes (float32 or float64), unrounded."""
        self._check_open()
        if failures:
            raise AggregationError(
                f"{self._label} needs every silo's result; missing: {', '.join(sorted(failures))}"
            )
        if not self._silos or self._layout is None:
            raise AggregationError("no silo sent a result to aggregate")
        if self._total <= 0:
            raise AggregationError("the silos' weights sum to zero; nothing to average")
        self._finished = True
        out: dict[str, npt.NDArray[np.floating]] = {}
        for name, info in self._layout.items():
            acc = self._sums.pop(name, None)
            if acc is None:  # every silo so far had weight zero
                acc = np.zeros(info.size, dtype=accumulator_dtype(info.dtype))
            np.divide(acc, self._total, out=acc)
            out[name] = acc.reshape(info.shape)
        return out

    def _check_open(self) -> None:
        if self._finished:
            raise AggregationError(f"this {self._label} aggregation has already finished")
        if self._broken is not None:
            raise AggregationError(self._broken)

    def _fold(self, name: str, value: npt.NDArray[np.generic], weight: float) -> None:
        if weight == 0:
            return
        flat = value.reshape(-1)
        acc = self._sums.get(name)
        if acc is None:
            info = self._layout[name] if self._layout else TensorInfo(value.shape, value.dtype)
            acc = np.empty(info.size, dtype=accumulator_dtype(info.dtype))
            np.multiply(flat, weight, out=acc, dtype=acc.dtype, casting="same_kind")
            self._sums[name] = acc
            return
        if weight == 1.0:
            np.add(acc, flat, out=acc, dtype=acc.dtype, casting="same_kind")
            return
        scratch = self._scratch_for(acc.dtype, acc.size)
        for start in range(0, acc.size, _CHUNK):
            stop = min(start + _CHUNK, acc.size)
            tmp = scratch[: stop - start]
            np.multiply(flat[start:stop], weight, out=tmp, dtype=acc.dtype, casting="same_kind")
            np.add(acc[start:stop], tmp, out=acc[start:stop])

    def _scratch_for(self, dtype: np.dtype[np.floating], size: int) -> npt.NDArray[np.floating]:
        scratch = self._scratch.get(dtype)
        if scratch is None or scratch.size < min(size, _CHUNK):
            scratch = np.empty(min(max(size, 1), _CHUNK), dtype=dtype)
            self._scratch[dtype] = scratch
        return scratch
