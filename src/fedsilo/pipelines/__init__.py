"""Ways to run an FL job's pipeline: the in-process simulation, centralized baselines, sweeps."""

from fedsilo.pipelines._baseline import (
    BaselineKind,
    BaselineReport,
    BaselineResult,
    BaselineRow,
    Pool,
    pool_files,
    pool_inputs,
    run_baselines,
    train_centralized,
)
from fedsilo.pipelines._simulation import SimulationResult, simulate, workspace_inputs
from fedsilo.pipelines._sweep import (
    SweepResult,
    SweepRow,
    check_plot_path,
    default_plot_path,
    override_spec,
    parse_sweep,
    plot_sweep,
    run_sweep,
)

__all__ = [
    "BaselineKind",
    "BaselineReport",
    "BaselineResult",
    "BaselineRow",
    "Pool",
    "SimulationResult",
    "SweepResult",
    "SweepRow",
    "check_plot_path",
    "default_plot_path",
    "override_spec",
    "parse_sweep",
    "plot_sweep",
    "pool_files",
    "pool_inputs",
    "run_baselines",
    "run_sweep",
    "simulate",
    "train_centralized",
    "workspace_inputs",
]
