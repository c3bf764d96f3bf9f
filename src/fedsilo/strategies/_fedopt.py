"""Server optimizers on the mean update: FedAvgM, FedAdagrad, FedAdam, FedYogi.

One family (Reddi et al. 2021, "Adaptive Federated Optimization"): the silos' weighted
mean minus the current global model is a pseudo-gradient Δ, and a server-side optimizer
takes a step along it. The variants differ only in that step, so they are one class with
the variant as an enum, not a tree of subclasses. The optimizer's state (momentum ``m``,
second moment ``v``) lives in the strategy instance across rounds: one instance per job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Self

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError
from fedsilo.strategies._fedavg import FedAvg, WeightedMean, cast_back
from fedsilo.strategies._specs import FedOptSpec, StrategySpec, Weighting
from fedsilo.strategies._updates import layout_of
from fedsilo.tensors import Parameters

__all__ = ["FedOpt", "ServerOptimizer"]

Arrays = dict[str, npt.NDArray[np.generic]]
_Floats = npt.NDArray[np.floating]


class ServerOptimizer(StrEnum):
    """The server-side step taken along the pseudo-gradient Δ."""

    AVGM = "fedavgm"
    """``v = momentum·v + Δ; x += lr·v`` (Hsu et al. 2019; momentum 0 and lr 1 is FedAvg)."""
    ADAGRAD = "fedadagrad"
    """``m = β1·m + (1-β1)·Δ; v += Δ²; x += lr·m / (√v + τ)``."""
    ADAM = "fedadam"
    """``m = β1·m + (1-β1)·Δ; v = β2·v + (1-β2)·Δ²; x += lr·m / (√v + τ)``."""
    YOGI = "fedyogi"
    """As FedAdam, with ``v = v - (1-β2)·Δ²·sign(v - Δ²)``."""


class FedOpt:
    """A FedAvg mean followed by a server optimizer step (Reddi et al. 2021).

    ``server_lr`` defaults to 1.0 for FedAvgM and 0.01 for the adaptive variants. The
    second moment starts at ``tau²`` (the paper's ``v₋₁ ≥ τ²``), the momentum at zero; no
    bias correction is applied, as in the paper. Only floating tensors take the step:
    integer tensors (BatchNorm's batch counter, say) get the plain weighted mean.
    Each round needs the current global parameters, which it reads and never modifies.
    """

    def __init__(
        self,
        *,
        optimizer: ServerOptimizer,
        server_lr: float | None = None,
        server_momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: Weighting = Weighting.SAMPLES,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if server_lr is None:
            server_lr = 1.0 if optimizer is ServerOptimizer.AVGM else 0.01
        for label, value, low, high in (
            ("server_momentum", server_momentum, 0.0, 1.0),
            ("beta1", beta1, 0.0, 1.0),
            ("beta2", beta2, 0.0, 1.0),
        ):
            if not low <= value < high:
                raise AggregationError(f"{label} must be in [{low}, {high}), not {value}")
        if not server_lr > 0 or not tau > 0:
            raise AggregationError("server_lr and tau must be > 0")
        self.optimizer = ServerOptimizer(optimizer)
        self.server_lr = float(server_lr)
        self.server_momentum = float(server_momentum)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self._fedavg = FedAvg(weighting=weighting, weights=weights)
        self._m: dict[str, _Floats] = {}
        self._v: dict[str, _Floats] = {}

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Self:
        """Build from a job spec's ``strategy`` section (a :class:`FedOptSpec`)."""
        if not isinstance(spec, FedOptSpec):
            raise TypeError(f"FedOpt is built from a FedOptSpec, not {type(spec).__name__}")
        return cls(
            optimizer=ServerOptimizer(spec.name),
            server_lr=spec.server_lr,
            server_momentum=spec.server_momentum,
            beta1=spec.beta1,
            beta2=spec.beta2,
            tau=spec.tau,
            weighting=spec.weighting,
            weights=spec.weights,
        )

    def state_arrays(self) -> Arrays:
        """The optimizer's state, ``m/NAME`` and ``v/NAME``: what a resumed job needs back."""
        return {
            f"{kind}/{name}": value
            for kind, moments in (("m", self._m), ("v", self._v))
            for name, value in moments.items()
        }

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Take back what :meth:`state_arrays` gave; :class:`AggregationError` if it is not."""
        for key, value in arrays.items():
            kind, _, name = key.partition("/")
            moments = {"m": self._m, "v": self._v}.get(kind)
            if moments is None or not name:
                raise AggregationError(f"the saved server optimizer state holds '{key}'")
            moments[name] = np.array(value, copy=True)

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """The server optimizer sends no per-silo configuration."""
        return {silo: {} for silo in silos}

    def begin_aggregation(self, round_: int, current: Parameters | None) -> _FedOptRound:
        """A streaming mean whose ``finish`` takes the optimizer step from ``current``."""
        if current is None:
            raise AggregationError(
                f"{self.optimizer.value} needs the current global parameters to take a step"
            )
        return _FedOptRound(self, current)

    def silo_weight(self, silo: str) -> float | None:
        """As in FedAvg: the weight of ``silo`` in the mean the optimizer steps from."""
        return self._fedavg.silo_weight(silo)

    def from_mean(self, round_: int, current: Parameters, mean: Mapping[str, _Floats]) -> Arrays:
        """One server optimizer step from ``current`` along ``mean - current``."""
        return self._step(current, mean)

    def _step(self, current: Parameters, means: Mapping[str, _Floats]) -> Arrays:
        """The new global parameters; updates the optimizer state, never ``current``."""
        out: Arrays = {}
        for name, mean in means.items():
            base = np.asarray(current[name])
            if base.dtype.kind != "f":
                out[name] = cast_back(mean, base.dtype)
                continue
            delta = mean  # our own buffer: Δ, then the step, then the result, in place
            np.subtract(delta, base, out=delta, casting="same_kind")
            direction = self._direction(name, delta)
            np.multiply(direction, self.server_lr, out=delta)
            np.add(delta, base, out=delta, casting="same_kind")
            out[name] = cast_back(delta, base.dtype)
        return out

    def _direction(self, name: str, delta: _Floats) -> _Floats:
        """Update the state of tensor ``name`` with Δ; return the step before the lr.

        ``delta`` may be overwritten; the returned array may be ``delta`` itself.
        """
        if self.optimizer is ServerOptimizer.AVGM:
            v = self._state(self._v, name, delta, 0.0)
            v *= self.server_momentum
            v += delta
            return v
        m = self._state(self._m, name, delta, 0.0)
        m *= self.beta1
        m += (1.0 - self.beta1) * delta
        v = self._state(self._v, name, delta, self.tau**2)
        squared = np.square(delta, out=delta)
        if self.optimizer is ServerOptimizer.ADAGRAD:
            v += squared
        elif self.optimizer is ServerOptimizer.ADAM:
            v *= self.beta2
            v += (1.0 - self.beta2) * squared
        else:
            v -= (1.0 - self.beta2) * squared * np.sign(v - squared)
        denominator = np.sqrt(v, out=delta)
        denominator += self.tau
        return np.divide(m, denominator, out=delta)

    @staticmethod
    def _state(store: dict[str, _Floats], name: str, like: _Floats, start: float) -> _Floats:
        state = store.get(name)
        if state is None:
            state = np.full_like(like, start)
            store[name] = state
        elif state.shape != like.shape:
            raise AggregationError(
                f"tensor '{name}' changed shape from {state.shape} to {like.shape} between "
                "rounds; the server optimizer's state no longer fits"
            )
        return state


class _FedOptRound:
    """One round of :class:`FedOpt`: a weighted mean of the silos, then the server step."""

    def __init__(self, strategy: FedOpt, current: Parameters) -> None:
        self._strategy = strategy
        self._current = current
        self._mean = WeightedMean(
            strategy.optimizer.value, strategy._fedavg.weight, layout_of(current)
        )

    def add(self, silo: str, params: Parameters | Path, num_samples: int) -> None:
        """Fold in one silo's parameters; they must have the current model's tensors."""
        self._mean.add(silo, params, num_samples)

    def finish(self, failures: Sequence[str] = ()) -> Arrays:
        """The new global parameters, after one server optimizer step."""
        return self._strategy._step(self._current, self._mean.finish_raw(failures))
