"""Federation specs, kits and provisioning: what a federation is and who may know what.

``load_federation`` reads and checks a federation spec; ``provision`` turns it into a
workspace with a CA and one kit per participant; ``load_kit`` and ``open_workspace`` read
them back.
"""

from fedsilo.config._federation import (
    ORCHESTRATOR_NAME,
    ApprovalSpec,
    Classification,
    ComputeSpec,
    DatasetSpec,
    FederationSpec,
    LimitsSpec,
    NodeSpec,
    OrchestratorSpec,
    SiloSpec,
    StorageSpec,
    load_federation,
)
from fedsilo.config._kit import Kit, ParticipantInfo, Role, SiloInfo, cert_fingerprint, load_kit
from fedsilo.config._provision import Workspace, open_workspace, provision, workspace_of
from fedsilo.config._resources import (
    ByteSize,
    Duration,
    JobCaps,
    ResourceBounds,
    ResourceGrant,
    ResourceRequest,
    format_bytes,
    format_seconds,
    local_cores,
    parse_bytes,
    parse_seconds,
)

__all__ = [
    "ORCHESTRATOR_NAME",
    "ApprovalSpec",
    "ByteSize",
    "Classification",
    "ComputeSpec",
    "DatasetSpec",
    "Duration",
    "FederationSpec",
    "JobCaps",
    "Kit",
    "LimitsSpec",
    "NodeSpec",
    "OrchestratorSpec",
    "ParticipantInfo",
    "ResourceBounds",
    "ResourceGrant",
    "ResourceRequest",
    "Role",
    "SiloInfo",
    "SiloSpec",
    "StorageSpec",
    "Workspace",
    "cert_fingerprint",
    "format_bytes",
    "format_seconds",
    "load_federation",
    "load_kit",
    "local_cores",
    "open_workspace",
    "parse_bytes",
    "parse_seconds",
    "provision",
    "workspace_of",
]
