"""Federation specs, kits and workspaces, read: what a federation is and who may know what.

``load_federation`` reads and checks a federation spec; ``load_kit`` reads a participant's
kit and ``open_workspace`` a provisioned workspace (:func:`fedsilo.provisioning.provision`
writes both).
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
from fedsilo.config._workspace import Workspace, open_workspace, workspace_of

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
    "workspace_of",
]
