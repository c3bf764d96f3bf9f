"""Job specs and bundles: what a submitter sends and a silo verifies."""

from fedsilo.jobs._bundle import MAX_BUNDLE_BYTES, Manifest, pack_bundle, unpack_bundle
from fedsilo.jobs._spec import Hyperparameters, JobSpec, StrategySpec, Weighting, load_job

__all__ = [
    "MAX_BUNDLE_BYTES",
    "Hyperparameters",
    "JobSpec",
    "Manifest",
    "StrategySpec",
    "Weighting",
    "load_job",
    "pack_bundle",
    "unpack_bundle",
]
