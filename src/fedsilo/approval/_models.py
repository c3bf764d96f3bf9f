"""What a silo's agent asks its approval endpoint, and what the endpoint answers.

The agent computes every field of an :class:`ApprovalRequest` itself (signature status,
the classification and size of each input from its own catalog, each output's
classification and destination, every file of the code and how it differs from the code
this silo approved last for a job of the same name). The one thing it takes from the
bundle is the model the submitter declared (``MODEL.json``, under the signature), and the
agent refuses to send any parameters that are not exactly that model. The endpoint
answers with an :class:`ApprovalAnswer`: approve, reject, or manual (held until a person
decides).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fedsilo.config import Classification, ResourceGrant
from fedsilo.jobs import ModelLayout, SigningStatus

__all__ = [
    "ApprovalAnswer",
    "ApprovalRequest",
    "CodeChange",
    "CodeFile",
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
    """One input of the job: the storage that holds it, the dataset, its classification
    and its size in bytes (a folder's: all its files).

    ``classification`` and ``bytes`` are ``None`` when the silo could not look the dataset
    up (it lives in another participant's storage, which this silo's catalog does not cover).
    """

    model_config = _FROZEN

    storage: str
    dataset: str
    classification: Classification | None = None
    bytes: int | None = None


class OutputRef(BaseModel):
    """One output: its name, where it goes (``orchestrator`` or this silo), its class, and
    what it is.

    ``bytes`` is the most one upload of it carries: for the model, the bytes of the
    declared tensors (``model``); for metrics, 8 bytes a value, for each declared name and
    fedsilo's own (``num_samples``, ``epsilon``). ``None`` when the job does not say (a
    bundle without ``MODEL.json``). ``metric_names`` are the metric names the job declares
    (a metric under another name stays in the silo); ``None`` from an agent that did not
    say, when only fedsilo's own leave.
    """

    model_config = _FROZEN

    name: str
    destination: str
    classification: Classification
    bytes: int | None = None
    model: ModelLayout | None = None
    metric_names: tuple[str, ...] | None = None


class CodeFile(BaseModel):
    """One file of the job's code: its path in the bundle, its size and sha256."""

    model_config = _FROZEN

    path: str
    bytes: int
    sha256: str


class CodeChange(BaseModel):
    """How the job's code differs from the last bundle this silo approved for a job of the
    same name.

    ``previous_job_id`` and ``previous_manifest`` name that bundle; both are ``None`` when
    this silo approved no job of that name before (every file is then new). ``diff`` is a
    unified diff of the text files (a binary file is one line with its sizes and digests),
    cut at a bound with a note saying what was left out (``diff_truncated``).
    """

    model_config = _FROZEN

    previous_job_id: str | None = None
    previous_manifest: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    diff: str = ""
    diff_truncated: bool = False

    @property
    def first(self) -> bool:
        """No bundle of this job name was approved in this silo before."""
        return self.previous_manifest is None

    @property
    def changed(self) -> bool:
        """The code is not the code last approved (or none was approved before)."""
        return self.first or bool(self.added or self.removed or self.modified)


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
    untrusted one). ``files`` lists every file of the code (``files_not_listed`` counts
    those past the listing's bound) and ``code_change`` how the code differs from the
    code this silo approved last for a job of the same name. ``rounds`` is how many
    training rounds the job runs: the model leaves once when it is built, then once a round.
    ``readers`` are the submitters besides the author who may read the job's results and
    model at the orchestrator (``*``: every submitter of the federation).
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
    rounds: int = 0
    files: tuple[CodeFile, ...] = ()
    files_not_listed: int = 0
    code_change: CodeChange = CodeChange()
    readers: tuple[str, ...] = ()

    def output(self, name: str) -> OutputRef | None:
        """The output called ``name``, or ``None``."""
        return next((o for o in self.outputs if o.name == name), None)


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
