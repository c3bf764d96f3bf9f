"""The orchestrator's side of an FL round under secure aggregation, around a strategy.

Under secure aggregation the orchestrator learns ``sum(w_i * delta_i)`` and ``sum(w_i)``
over the round's surviving silos, and nothing about any one of them. That is enough for
every :class:`~fedsilo.strategies.MeanStrategy` (the FedAvg family) and for DP-FedAvg
(:class:`~fedsilo.privacy.CentralDP`), whose silos clip their own update and weigh it 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError
from fedsilo.privacy._central import CentralDP
from fedsilo.privacy.secagg._server import AggregateResult
from fedsilo.strategies import MeanStrategy, Strategy
from fedsilo.tensors import Parameters

__all__ = ["mask_weights", "secure_global"]

Arrays = dict[str, npt.NDArray[np.generic]]


def mask_weights(strategy: Strategy, silos: Sequence[str]) -> dict[str, float | None]:
    """The weight each silo puts on its masked update (``None``: its ``num_samples``)."""
    if isinstance(strategy, CentralDP):
        return dict.fromkeys(silos, 1.0)  # uniform: what bounds one silo's influence
    if isinstance(strategy, MeanStrategy):
        return {silo: strategy.silo_weight(silo) for silo in silos}
    raise AggregationError(
        f"{type(strategy).__name__} needs every silo's own update and cannot run under "
        "secure aggregation"
    )


def secure_global(
    strategy: Strategy, round_: int, current: Parameters, result: AggregateResult
) -> Arrays:
    """The new global parameters from a round's unmasked sum of weighted updates."""
    if isinstance(strategy, CentralDP):
        n = len(result.survivors)
        if abs(result.total_weight - n) > 1e-3:
            raise AggregationError(
                f"round {round_}: under central DP every silo weighs its update 1, but the "
                f"weights of {n} silos sum to {result.total_weight:g}"
            )
        return strategy.add_noise_to_sum(result.weighted_sum, n, current, round_=round_)
    if not isinstance(strategy, MeanStrategy):
        raise AggregationError(f"{type(strategy).__name__} cannot run under secure aggregation")
    mean_delta = result.mean()
    if set(mean_delta) != set(current):
        raise AggregationError(
            f"round {round_}: the securely aggregated tensors differ from the global model's: "
            f"{sorted(set(mean_delta) ^ set(current))}"
        )
    mean = {
        name: np.add(mean_delta[name], np.asarray(base, dtype=np.float64))
        for name, base in current.items()
    }
    return strategy.from_mean(round_, current, mean)
