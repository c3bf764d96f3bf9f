"""What crosses the wire between submitters, the orchestrator and silo agents (JSON)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, TypeAdapter

from fedsilo.config import ResourceRequest
from fedsilo.jobs import JobSpec
from fedsilo.privacy._spec import MaskPlan, PrivacySpec

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "INLINE_PARAMS_MAX",
    "AddMemberRequest",
    "AggregateRequest",
    "CertificateInfo",
    "CheckReport",
    "CheckTask",
    "ComputeReport",
    "EvaluateTask",
    "FinishRequest",
    "FitTask",
    "JobContext",
    "JobInfo",
    "JobState",
    "JobTask",
    "LiteralState",
    "Member",
    "MemberInfo",
    "ModelRef",
    "Outcome",
    "PingTask",
    "PrepareTask",
    "ReleaseTask",
    "RenewRequest",
    "RevokeRequest",
    "RoundInfo",
    "RoundNote",
    "SecAggTask",
    "SiloCheck",
    "SiloReport",
    "SiloStatus",
    "StatusReport",
    "StepInfo",
    "StepKind",
    "StepRequest",
    "StepState",
    "SubmitRequest",
    "Task",
    "TaskKind",
    "TaskResult",
    "parse_task",
]


class _Msg(BaseModel):
    # bytes travel as base64 in JSON (a small model's parameters, in a task or a result)
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


class TaskKind(StrEnum):
    """What an agent is asked to do."""

    PING = "ping"  # start a worker that does nothing: the connectivity check
    CHECK = "check"  # before anything of the job runs: refuse what the silo cannot run
    PREPARE = "prepare"  # fetch and verify the bundle, resolve inputs, preprocess, init model
    FIT = "fit"  # (evaluate the previous global model, then) train one round
    EVALUATE = "evaluate"  # evaluate the final global model
    SECAGG = "secagg"  # one step of secure aggregation: a message for the silo's party
    RELEASE = "release"  # the job is over: stop its worker


class JobState(StrEnum):
    """Lifecycle of an FL job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


_HEX64 = r"^[0-9a-f]{64}$"
# a secure-aggregation message (JSON) relayed in a task or a result: shares for 100 silos
# over 1,000 rounds fit, base64 included
_SECAGG_MAX = 64 * 1024 * 1024
INLINE_PARAMS_MAX = 64 * 1024
"""The largest parameter file (bytes) that travels inside a task or a result instead of
as a download or an upload of its own: each round of a small model then costs a silo two
requests, not four."""

InlineParams = Annotated[bytes, Field(max_length=INLINE_PARAMS_MAX)]
"""A parameter file's bytes, sent inline (base64 in JSON); ``params_digest`` names it."""

# ids become folder names in a silo's storage: nothing that could climb out of it
_SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_METRIC = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
# a silo's own sentence (1,000 characters) and, where it shares errors, their text (8 KiB)
_ERROR_MAX = 10 * 1024


class JobContext(_Msg):
    """What a silo needs to take part in a job: its code, inputs and settings.

    Sent once, with the job's ``check`` and ``prepare`` tasks, and to an agent that takes
    the job up again after a restart (``GET /v1/agent/jobs/{id}/context``); the tasks of
    the rounds carry only what changes from one to the next.
    """

    job_name: str
    bundle_digest: str = Field(pattern=_HEX64)
    entrypoint: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    inputs: dict[str, str] = Field(default_factory=dict)
    hyperparameters: dict[str, object] = Field(default_factory=dict)
    author: str
    rounds: int = Field(ge=1)
    privacy: PrivacySpec = PrivacySpec()
    computes: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, ResourceRequest] = Field(default_factory=dict)
    outputs: dict[str, str | None] = Field(default_factory=dict)
    # the metric names the job declares: the only ones, with fedsilo's own, that leave
    metrics: tuple[Annotated[str, Field(pattern=_METRIC)], ...] | None = Field(
        default=None, max_length=64
    )
    # who besides the author reads the job's results and model (["*"]: every submitter)
    share_with: tuple[Annotated[str, Field(max_length=64)], ...] = Field(default=(), max_length=256)


class _Task(_Msg):
    """What every task has. A silo trusts nothing in a task blindly: identifiers that
    become paths are checked against strict patterns here, everything else by the agent."""

    task_id: str = Field(pattern=r"^[0-9a-f]{32}$")


class PingTask(_Task):
    """Start a worker that does nothing: the connectivity check (``fedsilo check``)."""

    kind: Literal[TaskKind.PING] = TaskKind.PING
    job_id: None = None
    round: Literal[0] = 0


class _JobTask(_Task):
    job_id: str = Field(pattern=_SAFE_ID)
    round: int = Field(default=0, ge=0)


class CheckTask(_JobTask):
    """Before anything of the job runs anywhere: refuse what this silo cannot run."""

    kind: Literal[TaskKind.CHECK] = TaskKind.CHECK
    context: JobContext


class PrepareTask(_JobTask):
    """Fetch and verify the bundle, ask for approval, preprocess, build the model."""

    kind: Literal[TaskKind.PREPARE] = TaskKind.PREPARE
    context: JobContext


class FitTask(_JobTask):
    """Train one round from the global model ``params_digest`` (evaluating it first from
    round 2 on). ``bundle_digest`` is the job's: an agent that takes the job up again
    refuses a task of another bundle. Under secure aggregation ``mask_weight`` and
    ``mask_plan`` are the round's encoding of the masked update. ``params``, when the
    model is at most :data:`INLINE_PARAMS_MAX` bytes, is the global model's file itself:
    the silo checks it against ``params_digest`` and downloads nothing."""

    kind: Literal[TaskKind.FIT] = TaskKind.FIT
    round: int = Field(ge=1)
    bundle_digest: str = Field(pattern=_HEX64)
    params_digest: str = Field(pattern=_HEX64)
    params: InlineParams | None = None  # the global model itself, when small
    evaluate_first: bool = False
    config: dict[str, FiniteFloat] = Field(default_factory=dict)
    mask_weight: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    mask_plan: MaskPlan | None = None


class EvaluateTask(_JobTask):
    """Evaluate the global model ``params_digest`` on this silo's data."""

    kind: Literal[TaskKind.EVALUATE] = TaskKind.EVALUATE
    bundle_digest: str = Field(pattern=_HEX64)
    params_digest: str = Field(pattern=_HEX64)
    params: InlineParams | None = None  # the global model itself, when small


class SecAggTask(_JobTask):
    """One message of secure aggregation for this silo's party (``None``: set the party
    up, with new keys, and advertise them)."""

    kind: Literal[TaskKind.SECAGG] = TaskKind.SECAGG
    secagg: str | None = Field(default=None, max_length=_SECAGG_MAX)


class ReleaseTask(_JobTask):
    """The job is over: stop its workers and give its compute back."""

    kind: Literal[TaskKind.RELEASE] = TaskKind.RELEASE


JobTask = CheckTask | PrepareTask | FitTask | EvaluateTask | SecAggTask | ReleaseTask
Task = Annotated[PingTask | JobTask, Field(discriminator="kind")]
_TASK: TypeAdapter[PingTask | JobTask] = TypeAdapter(Task)


def parse_task(data: str | bytes) -> PingTask | JobTask:
    """A task from its JSON; a ``ValidationError`` says which field of which kind."""
    return _TASK.validate_json(data)


class Outcome(StrEnum):
    """How a task ended in the silo."""

    DONE = "done"
    FAILED = "failed"  # task code or the silo failed (``error`` says which, in fedsilo's words)
    REFUSED = "refused"  # the silo refused it: policy, signature, classification
    STOPPED = "stopped"  # the silo stopped the step at one of its limits (``limit``)


class TaskResult(_Msg):
    """An agent's answer to a task.

    ``num_samples`` is what a fit trained on: the weight of its update by default.
    ``seconds`` is the agent's whole handling of the task (downloads and uploads
    included); ``compute_seconds`` the part spent in the job worker running task code.
    ``secagg`` holds the silo's secure-aggregation messages (JSON) for the orchestrator to
    relay. ``limit`` names the limit a stopped step reached (``memory limit 2 GiB``,
    ``time limit 8 h a step``): its whole process tree was killed.

    ``params``, for an update of at most :data:`INLINE_PARAMS_MAX` bytes, is the update's
    file itself, sent with the result instead of uploaded first; ``params_digest`` names
    it, and the orchestrator stores it only if its sha256 is that digest.

    ``error`` is the silo's own sentence, never text of task code; where the silo keeps the
    whole of a failure, ``error_id`` names it (the sentence says it too) and the silo's
    administrator reads it with ``fedsilo silo errors ID``. A silo that shares errors
    (``share_errors: true``) adds their message and traceback to ``error``, on lines of
    their own after the sentence.
    """

    outcome: Outcome
    error: str | None = Field(default=None, max_length=_ERROR_MAX)
    error_id: str | None = Field(default=None, pattern=r"^e-[0-9a-f]{12}$")
    limit: str | None = Field(default=None, max_length=200)
    params_digest: str | None = Field(default=None, pattern=_HEX64)
    params: InlineParams | None = None
    num_samples: int | None = Field(default=None, ge=0)
    train_metrics: dict[str, FiniteFloat] | None = None
    eval_metrics: dict[str, FiniteFloat] | None = None
    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    compute_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    secagg: tuple[Annotated[str, Field(max_length=_SECAGG_MAX)], ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DONE

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.REFUSED

    @classmethod
    def failed(cls, error: str) -> TaskResult:
        """A task that failed in the silo, with fedsilo's sentence ``error``."""
        return cls(outcome=Outcome.FAILED, error=error)


class SubmitRequest(_Msg):
    """A job submission: the spec and the digest of its already uploaded bundle."""

    spec: JobSpec
    bundle_digest: str = Field(pattern=_HEX64)
    manifest_digest: str = Field(pattern=_HEX64)


class RoundNote(_Msg):
    """What the orchestrator noticed of a silo in a round.

    ``kind`` is ``replay`` (the update is byte-identical to an earlier upload of the job or
    to one of its global models: the silo did not train), ``unchanged`` or ``duplicate``
    (noted, kept), ``clipped`` (it moved the model past the job's ``updates.max_norm`` and
    was scaled back onto it), ``missed`` (the round closed without the silo, which failed,
    disconnected or missed ``round_timeout``, under the job's ``min_silos``) or
    ``rejoined`` (the silo's agent restarted and took its task up again).
    """

    silo: str
    kind: str
    text: str


class RoundInfo(_Msg):
    """One round of a job: per-silo metrics, their sample-weighted aggregate, the
    federation-wide privacy accounting (``central_epsilon`` under central DP), and notes on
    the silos' updates (:class:`RoundNote`)."""

    round: int
    seconds: float | None = None
    train: dict[str, dict[str, float]] = Field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = Field(default_factory=dict)
    evaluate_aggregate: dict[str, float] = Field(default_factory=dict)
    privacy: dict[str, float] = Field(default_factory=dict)
    notes: list[RoundNote] = Field(default_factory=list)


class JobInfo(_Msg):
    """A job as the orchestrator sees it."""

    id: str
    name: str
    submitter: str
    state: JobState
    silos: list[str]
    rounds: int
    current_round: int
    error: str | None = None
    detail: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    history: list[RoundInfo] = Field(default_factory=list)
    has_model: bool = False
    version: int = 0
    # the submitters besides its owner who read its results (["*"]: every submitter)
    shared_with: list[str] = Field(default_factory=list)
    # the outputs that leave each silo, and the classification each declares ("" when the
    # job declares none: then as strict as the silo's inputs)
    outputs: dict[str, str] = Field(default_factory=dict)
    # what the caller sees: "full", or "summary" (no metric values: the federation's
    # administrator and the job's silos)
    view: Literal["full", "summary"] = "full"


class ComputeReport(_Msg):
    """One compute of a silo as its agent reports it: what it has, the limits of one job,
    what running jobs use now and which jobs wait for room."""

    name: str
    kind: str
    threads: int = Field(ge=0)
    gpus: tuple[int, ...] = ()
    memory: int = Field(ge=0)
    job_threads: int = Field(ge=0)
    job_gpus: int = Field(ge=0)
    job_memory: int = Field(ge=0)
    processes: int = Field(ge=0)
    cpu: float | None = Field(default=None, allow_inf_nan=False)
    disk: int | None = None
    max_step_seconds: float | None = Field(default=None, allow_inf_nan=False)
    threads_used: int = Field(default=0, ge=0)
    gpus_used: int = Field(default=0, ge=0)
    memory_used: int = Field(default=0, ge=0)
    running: tuple[str, ...] = Field(default=(), max_length=1000)
    queued: tuple[str, ...] = Field(default=(), max_length=1000)


class SiloReport(_Msg):
    """What a silo's agent tells the orchestrator about itself with its heartbeat.

    ``enforcement`` is how its limits hold: ``cgroup-v2``, ``cgroup-v1`` or ``rlimits``
    (``enforcement_note`` says why control groups could not be used). ``share_errors``
    says the silo sends the message and traceback of its failures with them, rather than
    keeping them to itself.
    """

    sandbox: str = Field(max_length=32)
    enforcement: str = Field(max_length=32)
    enforcement_note: str | None = Field(default=None, max_length=1000)
    computes: tuple[ComputeReport, ...] = Field(default=(), max_length=64)
    share_errors: bool = False


class SiloStatus(_Msg):
    """Whether a silo's agent is connected, and what it last reported of its computes."""

    name: str
    online: bool
    last_seen: float | None = None
    busy: bool = False
    sandbox: str | None = None
    report: SiloReport | None = None


EXPIRY_WARNING_DAYS = 30
"""``fedsilo status`` warns of a member's certificate this many days before it expires."""


class Member(_Msg):
    """A participant of the federation and the roles it holds at the orchestrator;
    ``expires``: when its last valid certificate expires (Unix time), once known."""

    name: str
    roles: list[str]
    expires: float | None = None


class CertificateInfo(_Msg):
    """One certificate of a member, by its SHA-256 fingerprint."""

    fingerprint: str
    not_after: float | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None


class MemberInfo(_Msg):
    """A member as the federation's administrator sees it (``fedsilo members``)."""

    name: str
    role: str
    roles: list[str]
    compute: str | None = None
    added_by: str
    removed_by: str | None = None
    certificates: list[CertificateInfo] = Field(default_factory=list)


_PEM = Field(min_length=1, max_length=64 * 1024)


class AddMemberRequest(_Msg):
    """A participant to admit: its certificate (PEM, signed by the federation's CA; its
    subject names it and its role) and, for a silo, the name of its compute."""

    certificate: Annotated[str, _PEM]
    compute: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RenewRequest(_Msg):
    """A member's new certificate, to connect with beside (then instead of) its old one."""

    certificate: Annotated[str, _PEM]


class RevokeRequest(_Msg):
    """Which certificate of a member to revoke: a fingerprint or its unique prefix; none:
    every certificate it holds."""

    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{4,64}$")


class StatusReport(_Msg):
    """The federation at a glance, as the caller may see it: the silos (a silo sees only
    itself), the jobs it may see, who it is and the federation's members."""

    federation: str
    silos: list[SiloStatus]
    jobs: list[JobInfo]
    you: Member | None = None
    members: list[Member] = Field(default_factory=list)


class SiloCheck(_Msg):
    """One silo's line of ``fedsilo check``."""

    silo: str
    reachable: bool
    ran: bool
    round_trip_seconds: float | None = None
    error: str | None = None


class CheckReport(_Msg):
    """The result of a no-op job sent through every silo."""

    silos: list[SiloCheck]


# -- literal pipelines: the submitter's loop drives the job step by step --------------------


class StepKind(StrEnum):
    """What a step of a literal pipeline runs in one silo."""

    TRAIN = "train"  # train from a global model: the silo's update stays with the orchestrator
    EVALUATE = "evaluate"  # evaluate a global model on the silo's data


class StepState(StrEnum):
    """Where a step stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class StepRequest(_Msg):
    """Run one step in one silo, from a global model of the job (its digest)."""

    kind: StepKind
    silo: str
    model: str = Field(pattern=_HEX64)
    round: int = Field(default=0, ge=0)


class StepInfo(_Msg):
    """A step as the orchestrator sees it: its metrics once done, never the silo's update."""

    step: str
    kind: StepKind
    silo: str
    round: int
    model: str
    state: StepState
    metrics: dict[str, float] | None = None
    error: str | None = None
    seconds: float = 0.0
    compute_seconds: float = 0.0


class AggregateRequest(_Msg):
    """Aggregate finished train steps of one round with the job's strategy."""

    steps: tuple[str, ...] = Field(min_length=1)
    round: int = Field(ge=1)


class ModelRef(_Msg):
    """A global model of the job, kept by the orchestrator: its digest and its round."""

    model: str = Field(pattern=_HEX64)
    round: int = Field(ge=0)


class FinishRequest(_Msg):
    """End a literal pipeline's job; ``model`` becomes its final model."""

    model: str = Field(pattern=_HEX64)


class LiteralState(_Msg):
    """A literal pipeline's job: whether its silos are prepared, and its initial model."""

    job_id: str
    state: JobState
    ready: bool
    silos: list[str]
    rounds: int
    initial_model: str | None = None
    error: str | None = None
