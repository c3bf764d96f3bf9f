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
    OrchestratorSpec,
    SiloSpec,
    StorageSpec,
    load_federation,
)
from fedsilo.config._kit import Kit, ParticipantInfo, Role, SiloInfo, cert_fingerprint, load_kit
from fedsilo.config._provision import Workspace, open_workspace, provision

__all__ = [
    "ORCHESTRATOR_NAME",
    "ApprovalSpec",
    "Classification",
    "ComputeSpec",
    "DatasetSpec",
    "FederationSpec",
    "Kit",
    "OrchestratorSpec",
    "ParticipantInfo",
    "Role",
    "SiloInfo",
    "SiloSpec",
    "StorageSpec",
    "Workspace",
    "cert_fingerprint",
    "load_federation",
    "load_kit",
    "open_workspace",
    "provision",
]
