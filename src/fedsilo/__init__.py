"""fedsilo: cross-silo federated learning with silos, an orchestrator and approved jobs.

The public API lives in subpackages, each at most two levels deep:
``fedsilo.config`` (federation specs, kits, provisioning), ``fedsilo.storage`` (silo
catalogs), ``fedsilo.jobs`` (job specs, bundles), ``fedsilo.task`` (the task API),
``fedsilo.strategies`` (aggregation), ``fedsilo.pipelines`` (simulation, baselines),
``fedsilo.api`` (the orchestrator's client), ``fedsilo.runtime`` (local deployment),
``fedsilo.errors`` (the exception tree).
"""

from fedsilo.errors import FedsiloError

__all__ = ["FedsiloError", "__version__"]

__version__ = "0.1.0"
