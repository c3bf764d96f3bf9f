"""The orchestrator's REST API as its callers see it: wire messages and the HTTPS client.

Kept apart from :mod:`fedsilo.orchestrator` so that silo agents and submitters import
neither the server nor numpy.
"""

from fedsilo.api._client import MalformedTask, OrchestratorClient, client_ssl_context
from fedsilo.api._messages import (
    AggregateRequest,
    CheckReport,
    ComputeReport,
    FinishRequest,
    JobInfo,
    JobState,
    LiteralState,
    Member,
    ModelRef,
    RoundInfo,
    RoundNote,
    SiloCheck,
    SiloReport,
    SiloStatus,
    StatusReport,
    StepInfo,
    StepKind,
    StepRequest,
    StepState,
    SubmitRequest,
    TaskKind,
    TaskMessage,
    TaskResult,
)

__all__ = [
    "AggregateRequest",
    "CheckReport",
    "ComputeReport",
    "FinishRequest",
    "JobInfo",
    "JobState",
    "LiteralState",
    "MalformedTask",
    "Member",
    "ModelRef",
    "OrchestratorClient",
    "RoundInfo",
    "RoundNote",
    "SiloCheck",
    "SiloReport",
    "SiloStatus",
    "StatusReport",
    "StepInfo",
    "StepKind",
    "StepRequest",
    "StepState",
    "SubmitRequest",
    "TaskKind",
    "TaskMessage",
    "TaskResult",
    "client_ssl_context",
]
