"""fedsilo: cross-silo federated learning with silos, an orchestrator and approved jobs.

The public API lives in subpackages, each at most two levels deep:
``fedsilo.config`` (federation specs, kits, provisioning), ``fedsilo.storage`` (silo
catalogs), ``fedsilo.jobs`` (job specs, bundles), ``fedsilo.task`` (the task API),
``fedsilo.strategies`` (aggregation), ``fedsilo.pipelines`` (simulation, baselines),
``fedsilo.api`` (the orchestrator's client), ``fedsilo.runtime`` (local deployment),
``fedsilo.errors`` (the exception tree). :class:`Federation` drives a whole federation
from Python (a notebook or a script): provision, start, submit, follow, fetch, stop.
"""

from typing import TYPE_CHECKING, Any

from fedsilo.errors import FedsiloError

if TYPE_CHECKING:
    from fedsilo._notebook import Federation, Job

__all__ = ["Federation", "FedsiloError", "Job", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``Federation`` and ``Job`` load on first use: ``import fedsilo`` stays light."""
    if name in ("Federation", "Job"):
        from fedsilo import _notebook

        return getattr(_notebook, name)
    raise AttributeError(f"module 'fedsilo' has no attribute {name!r}")
