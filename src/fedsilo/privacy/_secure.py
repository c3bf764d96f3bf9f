"""The orchestrator's side of an FL round under secure aggregation, around a strategy.

Under secure aggregation the orchestrator learns ``sum(w_i * delta_i)`` and ``sum(w_i)``
over the round's surviving silos, and nothing about any one of them. That is enough for
every :class:`~fedsilo.strategies.MeanStrategy` (the FedAvg family) and for DP-FedAvg
(:class:`~fedsilo.privacy.CentralDP`), whose silos clip their own update and weigh it 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError
from fedsilo.privacy._central import CentralDP
from fedsilo.privacy._spec import MaskPlan
from fedsilo.privacy.secagg._server import AggregateResult
from fedsilo.strategies import MeanStrategy, Strategy
from fedsilo.tensors import Parameters

__all__ = ["RoundPlan", "mask_weights", "round_plan", "secure_global"]

_NARROW_TOP = 2**31  # the signed range of a 32-bit word

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


@dataclass(frozen=True)
class RoundPlan:
    """How the silos of one round encode their masked inputs (public, like the weights).

    ``limits`` holds each silo's largest allowed scaled weight when ``word_bits`` is 32;
    :meth:`for_silo` is the :class:`~fedsilo.privacy.MaskPlan` its fit task carries.
    """

    word_bits: int = 64
    weight_scale: float = 1.0
    limits: Mapping[str, float] = field(default_factory=dict)

    def for_silo(self, silo: str) -> MaskPlan:
        """The plan one silo encodes its input with."""
        return MaskPlan(
            word_bits=32 if self.word_bits == 32 else 64,
            weight_scale=self.weight_scale,
            weight_limit=self.limits.get(silo),
        )


def round_plan(
    weights: Mapping[str, float | None],
    reported: Mapping[str, float],
    *,
    bits: int,
    clip_range: float,
) -> RoundPlan:
    """The encoding of a round's masked inputs: 32-bit words whenever they cannot overflow.

    ``weights`` are :func:`mask_weights` for the round's silos; ``reported`` each silo's
    latest reported ``num_samples``, for the silos weighed by their samples. When every
    silo's weight is known ahead (fixed, or reported in an earlier round), the weights are
    normalised by their total ``W`` so their sum is 1, and each silo may use up to
    ``headroom`` times its expected share, where ``headroom`` is what the 32-bit range
    leaves: ``(2**31 - silos - 1) / (max(clip_range, 1) * 2**bits)``, about 2 at 24 bits
    and clip range 64. Then no sum can overflow, and a silo whose weight more than
    doubled since it reported refuses to send rather than corrupt the sum.

    Otherwise, 64-bit words and raw weights: in round 1 of a job weighed by samples, after
    a silo reported no samples, or when ``bits`` and ``clip_range`` need more than 31 bits.
    """
    assumed = {silo: reported.get(silo) if w is None else w for silo, w in weights.items()}
    known = [a for a in assumed.values() if a is not None and math.isfinite(a) and a > 0]
    headroom = (_NARROW_TOP - len(assumed) - 1) / (max(clip_range, 1.0) * 2.0**bits)
    if not assumed or len(known) != len(assumed) or headroom < 1:
        return RoundPlan()
    total = math.fsum(known)
    return RoundPlan(
        word_bits=32,
        weight_scale=1.0 / total,
        limits={silo: headroom * float(a or 0.0) / total for silo, a in assumed.items()},
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
