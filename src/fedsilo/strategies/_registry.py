"""The table of strategy names, and ``build_strategy`` that reads it.

An explicit dict of names to classes (never an import string from config): a job spec's
``strategy.name`` picks the class, whose ``from_spec`` reads that strategy's typed spec.
"""

from __future__ import annotations

from typing import Protocol

from fedsilo.strategies._base import Strategy
from fedsilo.strategies._fedavg import FedAvg, FedProx
from fedsilo.strategies._fedopt import FedOpt
from fedsilo.strategies._robust import Krum, Median, TrimmedMean
from fedsilo.strategies._specs import StrategySpec

__all__ = ["STRATEGIES", "build_strategy"]


class _FromSpec(Protocol):
    def from_spec(self, spec: StrategySpec) -> Strategy: ...


STRATEGIES: dict[str, _FromSpec] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedOpt,
    "fedadagrad": FedOpt,
    "fedadam": FedOpt,
    "fedyogi": FedOpt,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multi_krum": Krum,
}
"""Strategy name (a spec's ``name``) -> the class built from that spec."""


def build_strategy(spec: StrategySpec) -> Strategy:
    """The strategy a job spec names, built from its typed parameters."""
    return STRATEGIES[spec.name].from_spec(spec)
