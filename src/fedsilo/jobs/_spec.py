"""The job spec: which code runs in which silos on which inputs, for how many rounds.

A job spec is YAML parsed once into frozen models; unknown keys, bad values and
inconsistent choices are :class:`~fedsilo.errors.ConfigError` naming the file and field.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedsilo._suggest import did_you_mean, listing
from fedsilo.config._federation import PARTICIPANT_PATTERN, Classification
from fedsilo.config._resources import ResourceRequest
from fedsilo.config._yamlio import FieldIssue, load_yaml_mapping, validate_model
from fedsilo.errors import ConfigError
from fedsilo.privacy._spec import PrivacySpec
from fedsilo.strategies._specs import MEAN_STRATEGIES, FedAvgSpec, StrategySpec, Weighting

__all__ = [
    "DEFAULT_METRICS",
    "FEDSILO_METRICS",
    "LEAVING_OUTPUTS",
    "SHARE_WITH_ALL",
    "Hyperparameters",
    "JobSpec",
    "OutputSpec",
    "PipelineStyle",
    "SiloStep",
    "StrategySpec",
    "UpdateBounds",
    "Weighting",
    "load_job",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


LEAVING_OUTPUTS = ("model", "metrics")

METRIC_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
DEFAULT_METRICS = ("loss", "accuracy")
"""The metric names a job declares when its spec says nothing of them."""
FEDSILO_METRICS = ("num_samples", "epsilon")
# share_with: [*] shares a job's results with every submitter of the federation
SHARE_WITH_ALL = "*"
"""Metrics fedsilo itself reports (the weight of an update, local DP's spend): they leave
whatever a job declares."""


class OutputSpec(_Frozen):
    """A declared output: its classification, when lower than the highest of the inputs.

    Without a declaration an output is as strict as the strictest input it came from; a
    lower one is a declassification, which the silo's approval endpoint must approve.
    """

    classification: Classification | None = None


class PipelineStyle(StrEnum):
    """Who drives an FL job's rounds.

    ``scatter_gather``: the job spec is the whole pipeline (each silo's subgraph, the gather
    step, the number of iterations) and the orchestrator runs it. ``literal``: the
    submitter's own Python loop drives it step by step (:mod:`fedsilo.pipelines`), within
    the rounds, silos, inputs and outputs the spec declares and the silos approved.
    """

    SCATTER_GATHER = "scatter_gather"
    LITERAL = "literal"


class SiloStep(StrEnum):
    """The steps of a job's silo subgraph, each run on a compute of the silo.

    ``preprocess`` runs once (the task's ``preprocess``); ``train`` builds the model, then
    trains and evaluates it every round. Both write and read the job's work folder.
    """

    PREPROCESS = "preprocess"
    TRAIN = "train"


class Hyperparameters(_Frozen):
    """Training hyperparameters handed to the task's code in every silo."""

    lr: float = Field(default=0.01, gt=0)
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    seed: int = Field(default=0, ge=0, lt=2**31)
    extra: dict[str, float | int | str | bool] = Field(default_factory=dict)


class UpdateBounds(_Frozen):
    """How far one silo's update may move the global model, checked by the orchestrator.

    ``max_norm`` bounds ``||update - global||`` relative to ``||global||`` (over the floating
    tensors; an absolute bound when the global model is all zeros); an update past it is
    refused, failing the round, or with ``over_norm: clip`` scaled back onto the bound
    before it is aggregated. Either way the job's history records it.
    """

    max_norm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    over_norm: Literal["refuse", "clip"] = "refuse"


class JobSpec(_Frozen):
    """An FL job: a code folder, the silos it runs in, their inputs, rounds and strategy.

    ``inputs`` maps a role the task code asks for (``train``, ``test``) to a dataset name
    in every silo's catalog; ``silo_inputs`` overrides that per silo. ``computes`` picks
    each step's compute by kind; ``resources`` asks for threads, GPUs, ranks (``workers``),
    memory and time, for every step or per step (see docs/compute.md). ``share_with``
    names the other submitters who may read the job's results and model (``[*]``: every
    submitter); the silos see the list before they approve (see docs/access.md).
    ``round_timeout`` (seconds) and ``min_silos`` close a training round without silos that
    miss it, if ``min_silos`` answered (default: every silo, no deadline but the silos'
    connection; see docs/task-api.md).
    """

    name: str = Field(pattern=_NAME)
    code: str
    entrypoint: str = Field(default="task", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    silos: tuple[str, ...] = Field(min_length=1)
    inputs: dict[str, str] = Field(default_factory=dict)
    silo_inputs: dict[str, dict[str, str]] = Field(default_factory=dict)
    rounds: int = Field(ge=1, le=100_000)
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    strategy: StrategySpec = FedAvgSpec()
    privacy: PrivacySpec = PrivacySpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    pipeline: PipelineStyle = PipelineStyle.SCATTER_GATHER
    computes: dict[SiloStep, Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]] = Field(
        default_factory=dict
    )
    resources: dict[SiloStep, ResourceRequest] = Field(default_factory=dict)
    updates: UpdateBounds = UpdateBounds()
    metrics: tuple[Annotated[str, Field(pattern=METRIC_NAME)], ...] = Field(
        default=DEFAULT_METRICS, max_length=64
    )
    share_with: tuple[Annotated[str, Field(pattern=f"{PARTICIPANT_PATTERN}|^[*]$")], ...] = Field(
        default=(), max_length=256
    )
    round_timeout: float | None = Field(default=None, gt=0, le=30 * 86400, allow_inf_nan=False)
    min_silos: int | None = Field(default=None, ge=1)

    @field_validator("resources", mode="before")
    @classmethod
    def _resources_by_step(cls, value: Any) -> Any:
        """A ``resources`` mapping without step names asks the same for every step.

        Preprocessing then runs as one process: the request's ``workers`` and ``nodes``
        are the train step's alone.
        """
        steps = {step.value for step in SiloStep}
        if isinstance(value, dict) and value and not (set(value) & steps):
            once = {k: v for k, v in value.items() if k not in ("workers", "nodes")}
            return {SiloStep.PREPROCESS.value: once, SiloStep.TRAIN.value: value}
        return value

    @field_validator("strategy", mode="before")
    @classmethod
    def _fedavg_by_default(cls, value: Any) -> Any:
        """A ``strategy`` section without a ``name`` is FedAvg's."""
        if isinstance(value, dict) and "name" not in value:
            return {"name": "fedavg", **value}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        seen: set[str] = set()
        for i, silo in enumerate(self.silos):
            if silo in seen:
                raise FieldIssue(("silos", i), f"silo '{silo}' is listed twice in 'silos'")
            seen.add(silo)
        for silo in self.silo_inputs:
            if silo not in seen:
                raise FieldIssue(
                    ("silo_inputs", silo),
                    f"silo_inputs names silo '{silo}'{did_you_mean(silo, self.silos)}, which "
                    f"is not in 'silos' ({listing(self.silos)})",
                )
        for name in self.outputs:
            if name not in LEAVING_OUTPUTS:
                raise FieldIssue(
                    ("outputs", name),
                    f"unknown output '{name}'{did_you_mean(name, LEAVING_OUTPUTS)}; a job's "
                    f"outputs are: {listing(LEAVING_OUTPUTS)}",
                )
        weights: dict[str, float] | None = getattr(self.strategy, "weights", None)
        if weights is not None:
            for silo in weights:
                if silo not in seen:
                    raise FieldIssue(
                        ("strategy", "weights", silo),
                        f"strategy weights name silo '{silo}'{did_you_mean(silo, self.silos)}, "
                        f"which is not in 'silos' ({listing(self.silos)})",
                    )
            missing = sorted(seen - set(weights))
            if missing:
                raise FieldIssue(
                    ("strategy", "weights"),
                    "strategy weights must give every silo a weight; missing: "
                    + ", ".join(missing),
                )
        for i, name in enumerate(self.metrics):
            if name in self.metrics[:i]:
                raise FieldIssue(("metrics", i), f"metric '{name}' is declared twice")
        for i, name in enumerate(self.share_with):
            if name in self.share_with[:i]:
                raise FieldIssue(("share_with", i), f"submitter '{name}' is listed twice")
            if name == SHARE_WITH_ALL and len(self.share_with) > 1:
                raise FieldIssue(
                    ("share_with", i),
                    "'*' shares with every submitter; list names or '*', not both",
                )
        self._check_secure_aggregation()
        self._check_quorum()
        if self.updates.max_norm is not None and self.privacy.secure_aggregation is not None:
            raise FieldIssue(
                ("updates", "max_norm"),
                "the orchestrator bounds each update's norm by reading it, and secure "
                "aggregation shows it only their sum; bound updates in the silos instead "
                "(privacy.local clips each example's gradient), or drop updates.max_norm",
            )
        pre = self.resources.get(SiloStep.PREPROCESS)
        for field, value in (
            ("workers", pre.workers if pre else 1),
            ("nodes", pre.nodes if pre else 1),
        ):
            if value > 1:
                raise FieldIssue(
                    ("resources", "preprocess", field),
                    f"preprocessing runs once, as one process; ask for {field} in the train "
                    f"step (resources: {{train: {{{field}: N}}}})",
                )
        return self

    def resources_for(self, step: SiloStep) -> ResourceRequest:
        """What the job asks for ``step`` in every silo (the compute's defaults if nothing)."""
        return self.resources.get(step, ResourceRequest())

    @property
    def quorum(self) -> int:
        """The fewest silos a training round closes with (``min_silos``, else every silo)."""
        return self.min_silos if self.min_silos is not None else len(self.silos)

    def _check_quorum(self) -> None:
        if self.min_silos is not None and self.min_silos > len(self.silos):
            raise FieldIssue(
                ("min_silos",),
                f"min_silos is {self.min_silos}, but the job runs in {len(self.silos)} "
                f"silo(s); at most {len(self.silos)}",
            )
        if self.privacy.secure_aggregation is None:
            return
        for field, own in (("min_silos", "threshold"), ("round_timeout", "timeout_seconds")):
            if getattr(self, field) is not None:
                raise FieldIssue(
                    (field,),
                    f"under secure aggregation the rounds close by its own rules: set "
                    f"privacy.secure_aggregation.{own} instead of {field}",
                )

    def _check_secure_aggregation(self) -> None:
        secure = self.privacy.secure_aggregation
        if secure is None:
            return
        where = ("privacy", "secure_aggregation")
        if self.pipeline is PipelineStyle.LITERAL:
            raise FieldIssue(
                ("pipeline",),
                "a literal pipeline does not run secure aggregation; write the job as a "
                "scatter-gather job spec (pipeline: scatter_gather) to use it",
            )
        if len(self.silos) < 2:
            raise FieldIssue(
                where, "secure aggregation needs at least 2 silos; this job names only one"
            )
        if secure.threshold is not None and secure.threshold > len(self.silos):
            raise FieldIssue(
                (*where, "threshold"),
                f"threshold {secure.threshold} is more than the job's {len(self.silos)} silos; "
                "the threshold is how many silos must answer for the sum to be recovered",
            )
        if self.strategy.name not in MEAN_STRATEGIES:
            raise FieldIssue(
                ("strategy", "name"),
                f"strategy '{self.strategy.name}' needs every silo's own update, and secure "
                "aggregation shows the orchestrator only their sum; use one of "
                + ", ".join(sorted(MEAN_STRATEGIES))
                + ", or drop privacy.secure_aggregation",
            )

    def inputs_for(self, silo: str) -> dict[str, str]:
        """The role → dataset map the job uses in ``silo``.

        A dataset is named ``NAME`` (in the silo's own storage) or ``STORAGE:NAME``.
        """
        return {**self.inputs, **self.silo_inputs.get(silo, {})}


def load_job(path: str | Path) -> tuple[JobSpec, Path]:
    """Parse a job spec file; return the spec and its code folder resolved to an absolute path."""
    path = Path(path)
    data, index = load_yaml_mapping(path)
    spec = validate_model(JobSpec, data, path, index)
    code_dir = (path.parent / spec.code).resolve()
    if not code_dir.is_dir():
        raise ConfigError(
            f"the code folder '{spec.code}' does not exist (looked in {code_dir})",
            file=str(path),
            field="code",
            line=index.line_of(("code",)),
        )
    if not (code_dir / f"{spec.entrypoint}.py").is_file():
        raise ConfigError(
            f"the entrypoint module '{spec.entrypoint}.py' is not in the code folder {code_dir}",
            file=str(path),
            field="entrypoint",
            line=index.line_of(("entrypoint",)),
        )
    return spec, code_dir
