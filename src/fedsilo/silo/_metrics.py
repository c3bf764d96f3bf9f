"""The metrics channel of a silo, narrowed: declared names only, within the silo's budget.

Task code chooses the names and values of its metrics, and both leave the silo each
round, so both are a channel out of it. A job declares its metric names in its spec (they
are part of what the silo approves); a metric under another name stays in the silo,
recorded in its audit log. Of those that may leave, the silo's policy can lower how many
(``max_count``) and how precisely (``digits``: significant digits kept, the value rounded
before it leaves). fedsilo's own metrics (``num_samples``, the weight of an update, and
local DP's ``epsilon``) always leave: ``num_samples`` as a whole number, ``epsilon``
rounded like the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedsilo.approval._budget import MAX_METRICS, MetricBudget
from fedsilo.jobs import FEDSILO_METRICS

__all__ = ["MAX_METRICS", "Gated", "MetricBudget", "gate_metrics", "round_digits"]


@dataclass(frozen=True)
class Gated:
    """A report of metrics through the gate: what leaves, and the names that stay."""

    sent: dict[str, float]
    withheld: tuple[str, ...]
    over_budget: tuple[str, ...] = ()


def round_digits(value: float, digits: int | None) -> float:
    """``value`` rounded to ``digits`` significant digits (as it is when ``None``)."""
    if digits is None or value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def gate_metrics(
    metrics: Mapping[str, float],
    declared: Iterable[str] | None,
    budget: MetricBudget | None = None,
) -> Gated:
    """Split ``metrics`` into what leaves and what stays.

    A name not in ``declared`` (``None``: the job declares none) nor one of fedsilo's own
    stays; of the declared ones, the first ``budget.max_count`` in the job's order leave,
    rounded to ``budget.digits``. ``metrics`` holds finite floats already.
    """
    budget = budget or MetricBudget()
    allowed = tuple(declared or ())
    withheld = tuple(
        sorted(name for name in metrics if name not in allowed and name not in FEDSILO_METRICS)
    )
    sent: dict[str, float] = {}
    over: list[str] = []
    for name in allowed:
        if name not in metrics:
            continue
        if len(sent) >= budget.max_count:
            over.append(name)
            continue
        sent[name] = round_digits(metrics[name], budget.digits)
    for name in FEDSILO_METRICS:
        if name in metrics:
            value = metrics[name]
            # a count: a whole number, whatever the task said
            sent[name] = (
                float(round(value)) if name == "num_samples" else round_digits(value, budget.digits)
            )
    return Gated(sent, withheld, tuple(over))
