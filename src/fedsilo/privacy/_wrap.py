"""The strategy a job runs: the one its spec names, wrapped by the privacy it asks for."""

from __future__ import annotations

from fedsilo.privacy._central import CentralDP
from fedsilo.privacy._spec import PrivacySpec
from fedsilo.strategies import Strategy, StrategySpec, build_strategy

__all__ = ["strategy_for"]


def strategy_for(strategy: StrategySpec, privacy: PrivacySpec) -> Strategy:
    """Build the job's strategy; with central DP, wrapped in DP-FedAvg's clip-and-noise."""
    built = build_strategy(strategy)
    if privacy.central is not None:
        return CentralDP(built, privacy.central)
    return built
