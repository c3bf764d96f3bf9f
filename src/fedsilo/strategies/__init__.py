"""Aggregation strategies. A strategy configures rounds and aggregates results, never
mutating what it is given.

``build_strategy`` turns a job spec's ``strategy`` section into a strategy through an
explicit table of names (``STRATEGIES``), never an import string from config.

The specs (pure pydantic) load with the package; everything that needs numpy loads on
first use, so that the job spec, which silo agents read, can import the specs without
pulling numpy into the agents.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedsilo.strategies._specs import (
    MEAN_STRATEGIES,
    FedAvgSpec,
    FedOptSpec,
    FedProxSpec,
    KrumSpec,
    MedianSpec,
    StrategySpec,
    TrimmedMeanSpec,
    Weighting,
)

if TYPE_CHECKING:
    from fedsilo.strategies._base import Aggregation, MeanStrategy, Strategy, weighted_metrics
    from fedsilo.strategies._fedavg import FedAvg, FedProx
    from fedsilo.strategies._fedopt import FedOpt, ServerOptimizer
    from fedsilo.strategies._registry import STRATEGIES, build_strategy
    from fedsilo.strategies._robust import Krum, Median, TrimmedMean

__all__ = [
    "MEAN_STRATEGIES",
    "STRATEGIES",
    "Aggregation",
    "FedAvg",
    "FedAvgSpec",
    "FedOpt",
    "FedOptSpec",
    "FedProx",
    "FedProxSpec",
    "Krum",
    "KrumSpec",
    "MeanStrategy",
    "Median",
    "MedianSpec",
    "ServerOptimizer",
    "Strategy",
    "StrategySpec",
    "TrimmedMean",
    "TrimmedMeanSpec",
    "Weighting",
    "build_strategy",
    "weighted_metrics",
]

# name -> the private module that defines it (loaded on first access, with numpy)
_LAZY = {
    "Aggregation": "_base",
    "MeanStrategy": "_base",
    "Strategy": "_base",
    "weighted_metrics": "_base",
    "FedAvg": "_fedavg",
    "FedProx": "_fedavg",
    "FedOpt": "_fedopt",
    "ServerOptimizer": "_fedopt",
    "Krum": "_robust",
    "Median": "_robust",
    "TrimmedMean": "_robust",
    "STRATEGIES": "_registry",
    "build_strategy": "_registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
