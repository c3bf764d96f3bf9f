"""What a silo checks before and after running a job: the rules of a silo, enforced.

* Inputs: a job reads only datasets of this silo's own storage, looked up in its catalog;
  a job naming a dataset the catalog lacks is refused before anything of it runs, with the
  names of the datasets the catalog has (names only: never a classification, a size or a
  byte of them), so that a typo is found at once.
* Outputs: each output's classification is the highest of its inputs unless the job
  declared a lower one (a declassification), which the approval must cover.
* Nothing ``sensitive`` leaves the silo; metrics leave only as a bounded set of numbers.
* The approval request says what each output is and how big (the model the bundle
  declares, the metric names), and what the code is (every file, and its diff against the
  code this silo approved last for a job of the same name).

These functions do no I/O beyond the catalog; the agent calls them and writes the audit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedsilo._suggest import closest, listing
from fedsilo.api import JobContext
from fedsilo.approval import (
    ApprovalRequest,
    CodeChange,
    CodeFile,
    Declassification,
    InputRef,
    OutputRef,
    PrivacySettings,
)
from fedsilo.config import Classification, ResourceGrant
from fedsilo.errors import ClassificationError, DatasetNotFound
from fedsilo.jobs import FEDSILO_METRICS, LEAVING_OUTPUTS, ModelLayout, SignatureCheck
from fedsilo.privacy import PrivacySpec
from fedsilo.storage import Catalog

__all__ = [
    "INPUTS_IN_CATALOG",
    "MAX_METRICS",
    "Clearance",
    "ResolvedInput",
    "approval_request",
    "check_leaving",
    "check_metrics",
    "classify_outputs",
    "metrics_bytes",
    "missing_inputs",
    "privacy_settings",
    "resolve_inputs",
]

MAX_METRICS = 64
MAX_METRIC_NAME = 64
ORCHESTRATOR = "orchestrator"
INPUTS_IN_CATALOG = "inputs-in-catalog"
"""The rule a silo names when it refuses a job whose input its catalog lacks."""


@dataclass(frozen=True)
class ResolvedInput:
    """A job input as this silo sees it: where it lives, and (if here) its path."""

    role: str
    storage: str
    dataset: str
    classification: Classification | None
    path: Path | None
    sha256: str | None = None
    size_bytes: int | None = None
    found: bool = True  # False: this silo's storage, but its catalog has no such dataset


@dataclass(frozen=True)
class Clearance:
    """What this silo's approval covered for one job: each output's classification, the
    privacy and number of rounds the approved request declared (which later tasks of the
    job cannot change), and the model it declared (the only parameters that may leave)."""

    job_id: str
    request_id: str
    rule: str
    decided_by: str
    outputs: Mapping[str, Classification]
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    rounds: int = 0
    model: ModelLayout | None = None


def resolve_inputs(inputs: Mapping[str, str], catalog: Catalog, silo: str) -> list[ResolvedInput]:
    """Look each input up in this silo's catalog; ``STORAGE:NAME`` names another storage.

    An input of another storage is returned without a path: the silo has none to give,
    and the approval and the agent both refuse it. So is one its catalog lacks (``found``
    false), which the agent refuses with :func:`missing_inputs`.
    """
    resolved = []
    for role, ref in sorted(inputs.items()):
        storage, _, name = ref.rpartition(":")
        storage = storage or silo
        if storage != silo:
            resolved.append(ResolvedInput(role, storage, name, None, None))
            continue
        try:
            record = catalog.get(name)
        except DatasetNotFound:
            resolved.append(ResolvedInput(role, silo, name, None, None, found=False))
            continue
        resolved.append(
            ResolvedInput(
                role,
                silo,
                name,
                record.classification,
                catalog.path_of(name),
                record.sha256,
                record.size_bytes,
            )
        )
    return resolved


def missing_inputs(inputs: Sequence[ResolvedInput], datasets: Sequence[str]) -> str:
    """Why the silo refuses a job whose inputs name datasets its catalog lacks.

    The reason names each dataset asked for (``inputs`` not ``found``) and its input, the
    closest of ``datasets`` (the names in the catalog), and lists those names: what the
    job's author needs to put a typo right. It says nothing else of the datasets.
    """
    missing = [i for i in inputs if not i.found]
    named = []
    typo = False
    for item in missing:
        match = closest(item.dataset, datasets)
        typo = typo or match is not None
        hint = f"; did you mean '{match}'?" if match is not None else ""
        named.append(f"'{item.dataset}' (the job's input '{item.role}'{hint})")
    reason = f"its catalog has no dataset {' and no dataset '.join(named)}; "
    reason += f"its datasets: {listing(datasets)}"
    if not typo:
        reason += "; a dataset is added by the silo's administrator (fedsilo data add)"
    return reason


def classify_outputs(
    declared: Mapping[str, str | None], inputs: list[ResolvedInput]
) -> tuple[dict[str, Classification], list[Declassification]]:
    """Each leaving output's classification, and the declassifications the job asks for.

    An input whose classification is unknown (another silo's) counts as ``sensitive``.
    """
    highest = Classification.highest(i.classification or Classification.SENSITIVE for i in inputs)
    outputs: dict[str, Classification] = {}
    lowered: list[Declassification] = []
    for name in LEAVING_OUTPUTS:
        word = declared.get(name)
        wanted = Classification(word) if word else highest
        outputs[name] = wanted
        if wanted.rank < highest.rank:
            lowered.append(Declassification(output=name, from_=highest, to=wanted))
    return outputs, lowered


def approval_request(
    job_id: str,
    context: JobContext,
    *,
    silo: str,
    compute: str,
    computes: Mapping[str, str] | None = None,
    resources: Mapping[str, ResourceGrant] | None = None,
    manifest_digest: str,
    signature: SignatureCheck,
    inputs: list[ResolvedInput],
    outputs: Mapping[str, Classification],
    declassifications: list[Declassification],
    model: ModelLayout | None = None,
    metric_names: Sequence[str] | None = None,
    files: tuple[CodeFile, ...] = (),
    files_not_listed: int = 0,
    code_change: CodeChange | None = None,
) -> ApprovalRequest:
    """The request this silo's approval endpoint decides on, all computed by the silo but
    ``model``, which the submitter declared in the bundle (and the agent holds it to).

    ``metric_names`` are the metric names the job declares (``None``: it declares none).
    """
    names = None if metric_names is None else tuple(metric_names)
    return ApprovalRequest(
        job_id=job_id,
        job_name=context.job_name,
        silo=silo,
        compute=compute,
        computes=dict(computes or {}),
        resources=dict(resources or {}),
        bundle_digest=context.bundle_digest,
        manifest_digest=manifest_digest,
        author=context.author,
        signing=signature.status,
        signing_key=signature.key_name or signature.key_id,
        inputs=tuple(
            InputRef(
                storage=i.storage,
                dataset=i.dataset,
                classification=i.classification,
                bytes=i.size_bytes,
            )
            for i in inputs
        ),
        outputs=tuple(_output(name, c, model, names) for name, c in outputs.items()),
        declassifications=tuple(declassifications),
        privacy=privacy_settings(context.privacy),
        rounds=context.rounds,
        files=files,
        files_not_listed=files_not_listed,
        code_change=code_change or CodeChange(),
        readers=tuple(context.share_with),
    )


def _output(
    name: str,
    classification: Classification,
    model: ModelLayout | None,
    names: tuple[str, ...] | None,
) -> OutputRef:
    """What one leaving output is: the declared model, or the metrics (their names)."""
    out = OutputRef(name=name, destination=ORCHESTRATOR, classification=classification)
    if name == "model":
        return out.model_copy(
            update={"bytes": None if model is None else model.bytes, "model": model}
        )
    if name == "metrics":
        return out.model_copy(update={"bytes": metrics_bytes(names), "metric_names": names})
    return out


def metrics_bytes(names: Sequence[str] | None) -> int:
    """The most one report of metrics carries out of the silo: 8 bytes a value, for each
    declared name and fedsilo's own (``num_samples``, ``epsilon``); a metric under any
    other name stays in the silo (:mod:`fedsilo.silo._metrics`)."""
    return 8 * (len(names or ()) + len(FEDSILO_METRICS))


def privacy_settings(spec: PrivacySpec) -> PrivacySettings:
    """What the approval endpoint sees of a job's privacy: mechanism, target, noise, and
    whether the silo's update leaves only masked (secure aggregation)."""
    if spec.local is not None:
        return PrivacySettings(
            mechanism="dp-sgd",
            target_epsilon=spec.local.target_epsilon,
            target_delta=spec.local.target_delta,
            noise_multiplier=spec.local.noise_multiplier,
            secure_aggregation=spec.secure_aggregation is not None,
        )
    secure = spec.secure_aggregation is not None
    if spec.central is not None:
        return PrivacySettings(
            mechanism="dp-fedavg",
            target_delta=spec.central.target_delta,
            noise_multiplier=spec.central.noise_multiplier,
            secure_aggregation=secure,
        )
    return PrivacySettings(secure_aggregation=secure)


def check_leaving(silo: str, name: str, classification: Classification) -> None:
    """Refuse to let a ``sensitive`` output leave the silo."""
    if classification is Classification.SENSITIVE:
        raise ClassificationError(
            f"silo '{silo}' keeps output '{name}': it is sensitive and sensitive data never "
            f"leaves a silo; if it may, declare it in the job spec (outputs: {name}: "
            "{classification: intermediate}) and have the silo approve that"
        )


def check_metrics(silo: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics leave only as a bounded set of finite numbers with short names."""
    if len(metrics) > MAX_METRICS:
        raise ClassificationError(
            f"silo '{silo}' keeps the metrics: {len(metrics)} values, over the limit of "
            f"{MAX_METRICS}"
        )
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or len(key) > MAX_METRIC_NAME:
            raise ClassificationError(f"silo '{silo}' keeps the metrics: a name is too long")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ClassificationError(f"silo '{silo}' keeps the metrics: '{key}' is not a number")
        if not math.isfinite(value):
            raise ClassificationError(f"silo '{silo}' keeps the metrics: '{key}' is not finite")
        out[key] = float(value)
    return out
