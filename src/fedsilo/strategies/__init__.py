"""Aggregation strategies. A strategy is pure: it configures rounds and aggregates results."""

from fedsilo.jobs import StrategySpec
from fedsilo.strategies._base import Aggregation, Strategy, weighted_metrics
from fedsilo.strategies._fedavg import FedAvg

__all__ = ["STRATEGIES", "Aggregation", "FedAvg", "Strategy", "build_strategy", "weighted_metrics"]

STRATEGIES = {"fedavg": FedAvg}


def build_strategy(spec: StrategySpec) -> Strategy:
    """The strategy a job spec names, built from its typed parameters."""
    return STRATEGIES[spec.name].from_spec(spec)
