"""What a silo's agent asks its approval endpoint, and what the endpoint answers.

The agent computes every field of an :class:`ApprovalRequest` itself (signature status,
the classification of each input from its own catalog, each output's classification and
destination); nothing in it is taken on the submitter's word. The endpoint answers with
an :class:`ApprovalAnswer`: approve, reject, or manual (held until a person decides).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fedsilo.config import Classification, ResourceGrant
from fedsilo.jobs import SigningStatus

__all__ = [
    "ApprovalAnswer",
    "ApprovalRequest",
    "Decision",
    "Declassification",
    "InputRef",
    "OutputRef",
    "PrivacySettings",
    "SigningStatus",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Decision(StrEnum):
    """What the approval endpoint says about a job."""

    APPROVE = "approve"
    REJECT = "reject"
    MANUAL = "manual"  # held until the silo's administrator approves or rejects it


class InputRef(BaseModel):
    """One input of the job: the storage that holds it, the dataset, its classification.

    ``classification`` is ``None`` when the silo could not look the dataset up (it lives
    in another participant's storage, which this silo's catalog does not cover).
    """

    model_config = _FROZEN

    storage: str
    dataset: str
    classification: Classification | None = None


class OutputRef(BaseModel):
    """One output: its name, where it goes (``orchestrator`` or this silo), its class."""

    model_config = _FROZEN

    name: str
    destination: str
    classification: Classification


class Declassification(BaseModel):
    """An output the job declares less strict than its inputs (``from`` → ``to``).

    Written ``{output: model, from: sensitive, to: intermediate}`` on the wire and in a
    policy file; ``from_`` in Python because ``from`` is a keyword.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True
    )

    output: str
    from_: Classification = Field(validation_alias="from", serialization_alias="from")
    to: Classification


class PrivacySettings(BaseModel):
    """The privacy settings the job declares: differential privacy (all optional), and
    whether the silo's update leaves only masked, under secure aggregation."""

    model_config = _FROZEN

    mechanism: str | None = None
    target_epsilon: float | None = None
    target_delta: float | None = None
    noise_multiplier: float | None = None
    secure_aggregation: bool = False


class ApprovalRequest(BaseModel):
    """Everything a silo's approval endpoint decides on, for one FL job in that silo.

    It is asked once per FL job and covers all of the job's tasks in this silo
    (preprocessing and every training round). ``compute`` is the compute that trains;
    ``computes`` names the compute of each step of the silo subgraph, and ``resources``
    what the silo grants each step there (threads, GPUs, ranks, memory, processes, time).
    ``signing_key`` names the trusted key that signed the code (or the key id of an
    untrusted one).
    """

    model_config = _FROZEN

    job_id: str
    job_name: str
    silo: str
    compute: str
    computes: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, ResourceGrant] = Field(default_factory=dict)
    bundle_digest: str
    manifest_digest: str
    author: str
    signing: SigningStatus
    signing_key: str | None = None
    inputs: tuple[InputRef, ...]
    outputs: tuple[OutputRef, ...]
    declassifications: tuple[Declassification, ...] = ()
    privacy: PrivacySettings = PrivacySettings()


class ApprovalAnswer(BaseModel):
    """The endpoint's answer: the decision, the rule that made it and why, and by whom.

    ``decided_by`` is ``policy`` for a rule's decision, or the administrator's name for a
    person's. ``expires_at`` (Unix time) is set when a person's decision lapses; after it
    the job is held for a person again.
    """

    model_config = _FROZEN

    request_id: str
    decision: Decision
    rule: str
    reason: str
    decided_by: str
    expires_at: float | None = None
