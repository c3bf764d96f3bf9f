"""Byzantine-robust aggregators: coordinate-wise median, trimmed mean, Krum and Multi-Krum.

Each must see every silo's parameters before it can say anything, so, unlike the FedAvg
family, these keep one copy of each silo's model until ``finish`` (memory grows with the
silo count; that is inherent to what they compute). ``finish`` combines one tensor at a
time and frees the silos' copies of it as it goes. Sample counts play no part: a silo that
lies about its parameters can lie about its sample count too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError
from fedsilo.strategies._fedavg import accumulator_dtype, cast_back
from fedsilo.strategies._specs import KrumSpec, MedianSpec, StrategySpec, TrimmedMeanSpec
from fedsilo.strategies._updates import Layout, check_layout, open_update
from fedsilo.tensors import Parameters

__all__ = ["Krum", "Median", "TrimmedMean"]

Arrays = dict[str, npt.NDArray[np.generic]]
_Floats = npt.NDArray[np.floating]
# Combines one tensor's values from every silo, stacked along axis 0 in silo-name order.
_Combine = Callable[[_Floats], _Floats]


class Median:
    """Coordinate-wise median of the silos' parameters (Yin et al. 2018).

    Each coordinate of the result is the median of the silos' values there, so fewer than
    half the silos, however wrong, cannot drag it outside the range of the honest ones.
    """

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Self:
        """Build from a job spec's ``strategy`` section (a :class:`MedianSpec`)."""
        if not isinstance(spec, MedianSpec):
            raise TypeError(f"Median is built from a MedianSpec, not {type(spec).__name__}")
        return cls()

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """No per-silo configuration."""
        return {silo: {} for silo in silos}

    def begin_aggregation(self, round_: int, current: Parameters | None) -> _KeepAll:
        """Keep every silo's parameters; take the median per coordinate at the end."""
        return _KeepAll("median", _median_combiner)


class TrimmedMean:
    """Coordinate-wise trimmed mean (Yin et al. 2018).

    Per coordinate, the ``⌊trim_ratio·n⌋`` lowest and highest of the n silos' values are
    dropped and the rest averaged; ``trim_ratio`` 0 is the plain (unweighted) mean.
    """

    def __init__(self, *, trim_ratio: float = 0.1) -> None:
        if not 0 <= trim_ratio < 0.5:
            raise AggregationError(f"trim_ratio must be in [0, 0.5), not {trim_ratio}")
        self.trim_ratio = float(trim_ratio)

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Self:
        """Build from a job spec's ``strategy`` section (a :class:`TrimmedMeanSpec`)."""
        if not isinstance(spec, TrimmedMeanSpec):
            raise TypeError(
                f"TrimmedMean is built from a TrimmedMeanSpec, not {type(spec).__name__}"
            )
        return cls(trim_ratio=spec.trim_ratio)

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """No per-silo configuration."""
        return {silo: {} for silo in silos}

    def begin_aggregation(self, round_: int, current: Parameters | None) -> _KeepAll:
        """Keep every silo's parameters; trim and average per coordinate at the end."""
        return _KeepAll("trimmed mean", self._combiner)

    def _combiner(self, silos: Sequence[str]) -> _Combine:
        n = len(silos)
        cut = int(np.floor(self.trim_ratio * n))

        def combine(stack: _Floats) -> _Floats:
            kept = np.sort(stack, axis=0)[cut : n - cut]
            return np.asarray(np.mean(kept, axis=0, dtype=np.float64), dtype=stack.dtype)

        return combine


class Krum:
    """Krum and Multi-Krum (Blanchard et al. 2017).

    Each silo's update is scored by the sum of squared distances to its n - f - 2 nearest
    neighbours, where f (``byzantine``) is how many silos may be adversarial; Krum returns
    the lowest-scored silo's parameters, Multi-Krum the plain mean of the ``select`` lowest
    (``None``: n - f). The guarantee needs n ≥ 2f + 3 silos; fewer is an error.
    """

    def __init__(self, *, byzantine: int = 1, select: int | None = 1) -> None:
        if byzantine < 0:
            raise AggregationError(f"byzantine must be >= 0, not {byzantine}")
        if select is not None and select < 1:
            raise AggregationError(f"select must be >= 1, not {select}")
        self.byzantine = byzantine
        self.select = select

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Self:
        """Build from a job spec's ``strategy`` section (a :class:`KrumSpec`)."""
        if not isinstance(spec, KrumSpec):
            raise TypeError(f"Krum is built from a KrumSpec, not {type(spec).__name__}")
        select = 1 if spec.name == "krum" else spec.select
        return cls(byzantine=spec.byzantine, select=select)

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """No per-silo configuration."""
        return {silo: {} for silo in silos}

    def begin_aggregation(self, round_: int, current: Parameters | None) -> _KeepAll:
        """Keep every silo's parameters and their pairwise distances; select at the end."""
        return _KeepAll("Krum", self._combiner, pairwise=True)

    def _combiner(self, silos: Sequence[str], distances: npt.NDArray[np.float64]) -> _Combine:
        n, f = len(silos), self.byzantine
        if n < 2 * f + 3:
            raise AggregationError(
                f"Krum with byzantine={f} needs at least 2f + 3 = {2 * f + 3} silos; got {n}"
            )
        select = n - f if self.select is None else self.select
        if select > n - f:
            raise AggregationError(f"Multi-Krum can select at most n - f = {n - f}, not {select}")
        neighbours = n - f - 2
        scores = [float(np.sort(np.delete(distances[i], i))[:neighbours].sum()) for i in range(n)]
        # ties go to the silo whose name sorts first, so arrival order never matters
        chosen = sorted(sorted(range(n), key=lambda i: scores[i])[:select])
        return lambda stack: np.mean(stack[chosen], axis=0, dtype=np.float64)


class _KeepAll:
    """An aggregation that keeps a copy of every silo's parameters until ``finish``."""

    def __init__(
        self,
        label: str,
        combiner: Callable[..., _Combine],
        *,
        pairwise: bool = False,
    ) -> None:
        self._label = label
        self._combiner = combiner
        self._pairwise = pairwise
        self._layout: Layout | None = None
        self._kept: dict[str, Arrays] = {}
        self._distances: dict[tuple[str, str], float] = {}
        self._finished = False

    def add(self, silo: str, params: Parameters | Path, num_samples: int) -> None:
        """Keep a copy of ``silo``'s parameters (``num_samples`` is not used)."""
        if self._finished:
            raise AggregationError(f"this {self._label} aggregation has already finished")
        if silo in self._kept:
            raise AggregationError(f"silo '{silo}' sent two results for one round")
        with open_update(silo, params) as update:
            check_layout(update, self._layout if self._layout is not None else update.layout)
            arrays: Arrays = {}
            for name in update.layout:
                value = update.tensor(name)
                arrays[name] = value if update.owned else np.array(value, copy=True)
        if self._pairwise:
            for other, theirs in self._kept.items():
                self._distances[(other, silo)] = _squared_distance(theirs, arrays)
        if self._layout is None:
            self._layout = dict(update.layout)
        self._kept[silo] = arrays

    def finish(self, failures: Sequence[str] = ()) -> Arrays:
        """Combine the kept parameters tensor by tensor, freeing each as it goes."""
        if self._finished:
            raise AggregationError(f"this {self._label} aggregation has already finished")
        if failures:
            raise AggregationError(
                f"{self._label} needs every silo's result; missing: {', '.join(sorted(failures))}"
            )
        if not self._kept or self._layout is None:
            raise AggregationError("no silo sent a result to aggregate")
        silos = sorted(self._kept)
        if self._pairwise:
            distances = np.zeros((len(silos), len(silos)))
            for i, a in enumerate(silos):
                for j, b in enumerate(silos[i + 1 :], start=i + 1):
                    d = self._distances.get((a, b), self._distances.get((b, a), 0.0))
                    distances[i, j] = distances[j, i] = d
            combine = self._combiner(silos, distances)
        else:
            combine = self._combiner(silos)
        self._finished = True
        out: Arrays = {}
        for name, info in self._layout.items():
            dtype = accumulator_dtype(info.dtype)
            stack = np.stack([self._kept[s].pop(name).astype(dtype, copy=False) for s in silos])
            out[name] = cast_back(np.asarray(combine(stack), dtype=dtype), info.dtype)
            del stack
        self._kept.clear()
        return out


def _median_combiner(silos: Sequence[str]) -> _Combine:
    return lambda stack: np.median(stack, axis=0)


def _squared_distance(a: Arrays, b: Arrays) -> float:
    """‖a - b‖² over every tensor, summed in float64."""
    total = 0.0
    for name, x in a.items():
        diff = np.subtract(x, b[name], dtype=np.float64).reshape(-1)
        total += float(np.dot(diff, diff))
    return total
