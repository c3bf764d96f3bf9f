"""Ways to run an FL job's pipeline: the in-process simulation, literal pipelines (a loop of
your own over silos and rounds), centralized baselines, sweeps."""

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
from fedsilo.pipelines._literal import (
    LiteralJob,
    ModelHandle,
    StepHandle,
    local_literal,
    start_literal,
)
from fedsilo.pipelines._simulation import (
    SimulationResult,
    simulate,
    workspace_inputs,
    workspace_threads,
)
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
    "LiteralJob",
    "ModelHandle",
    "Pool",
    "SimulationResult",
    "StepHandle",
    "SweepResult",
    "SweepRow",
    "check_plot_path",
    "default_plot_path",
    "local_literal",
    "override_spec",
    "parse_sweep",
    "plot_sweep",
    "pool_files",
    "pool_inputs",
    "run_baselines",
    "run_sweep",
    "simulate",
    "start_literal",
    "train_centralized",
    "workspace_inputs",
    "workspace_threads",
]
