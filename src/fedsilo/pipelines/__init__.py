"""Ways to run an FL job's pipeline: the in-process simulation and centralized baselines."""

from fedsilo.pipelines._baseline import BaselineResult, train_centralized
from fedsilo.pipelines._simulation import SimulationResult, simulate, workspace_inputs

__all__ = [
    "BaselineResult",
    "SimulationResult",
    "simulate",
    "train_centralized",
    "workspace_inputs",
]
