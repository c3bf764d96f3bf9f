"""What a silo's policy lets its metrics carry out of it (:mod:`fedsilo.silo._metrics`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MAX_METRICS", "MetricBudget"]

MAX_METRICS = 64
"""The most metrics one report carries, whatever a policy says."""


class MetricBudget(BaseModel):
    """How many metrics a silo lets leave in one report, and how precisely.

    ``max_count`` bounds the declared metrics a report carries (fedsilo's own come on top);
    ``digits`` keeps that many significant digits of each value (``None``: all of a
    float64's), rounded before it leaves. Written in the policy file as
    ``metrics: {max_count: 8, digits: 3}``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_count: int = Field(default=MAX_METRICS, ge=0, le=MAX_METRICS)
    digits: int | None = Field(default=None, ge=1, le=17)
