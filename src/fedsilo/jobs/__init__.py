"""Job specs, bundles and code signing: what a submitter sends and a silo verifies."""

from fedsilo.jobs._bundle import (
    MAX_BUNDLE_BYTES,
    Manifest,
    bundle_signature,
    pack_bundle,
    unpack_bundle,
)
from fedsilo.jobs._signing import (
    BundleSignature,
    SignatureCheck,
    SigningStatus,
    check_signature,
    key_id,
    load_private_key,
    new_signing_key,
    parse_public_key,
    public_key_line,
    sign_digest,
)
from fedsilo.jobs._spec import (
    LEAVING_OUTPUTS,
    Hyperparameters,
    JobSpec,
    OutputSpec,
    PipelineStyle,
    SiloStep,
    StrategySpec,
    Weighting,
    load_job,
)

__all__ = [
    "LEAVING_OUTPUTS",
    "MAX_BUNDLE_BYTES",
    "BundleSignature",
    "Hyperparameters",
    "JobSpec",
    "Manifest",
    "OutputSpec",
    "PipelineStyle",
    "SignatureCheck",
    "SigningStatus",
    "SiloStep",
    "StrategySpec",
    "Weighting",
    "bundle_signature",
    "check_signature",
    "key_id",
    "load_job",
    "load_private_key",
    "new_signing_key",
    "pack_bundle",
    "parse_public_key",
    "public_key_line",
    "sign_digest",
    "unpack_bundle",
]
