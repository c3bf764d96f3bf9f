"""A silo's approval endpoint: policy rules, the REST service, the manual queue, clients.

Before any job runs in a silo, the silo's agent asks the silo's own approval endpoint
(once per FL job). The endpoint evaluates the silo's ``policy.yaml`` and answers approve,
reject or manual (held until the silo's administrator decides). The agent's client fails
closed: no valid answer is a rejection.

The server itself (FastAPI, uvicorn) lives in ``fedsilo.approval._server`` and is imported
only by ``fedsilo approval serve``, so that the agent never loads a web framework.
"""

from fedsilo.approval._client import ENDPOINT_RULE, WAIT_RULE, AdminClient, ApprovalClient
from fedsilo.approval._default import default_policy_yaml
from fedsilo.approval._models import (
    ApprovalAnswer,
    ApprovalRequest,
    CodeChange,
    CodeFile,
    Decision,
    Declassification,
    InputRef,
    OutputRef,
    PrivacySettings,
    SigningStatus,
)
from fedsilo.approval._policy import DEFAULT_RULE, Condition, Policy, Rule, load_policy
from fedsilo.approval._queue import QueueEntry, QueueState

__all__ = [
    "DEFAULT_RULE",
    "ENDPOINT_RULE",
    "WAIT_RULE",
    "AdminClient",
    "ApprovalAnswer",
    "ApprovalClient",
    "ApprovalRequest",
    "CodeChange",
    "CodeFile",
    "Condition",
    "Decision",
    "Declassification",
    "InputRef",
    "OutputRef",
    "Policy",
    "PrivacySettings",
    "QueueEntry",
    "QueueState",
    "Rule",
    "SigningStatus",
    "default_policy_yaml",
    "load_policy",
]
