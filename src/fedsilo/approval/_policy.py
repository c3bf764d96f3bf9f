"""A silo's approval policy: ordered rules read once from ``policy.yaml``, evaluated purely.

The first rule whose ``when`` holds decides; when none does, ``default`` decides (reject
unless the file says otherwise). Every key of a ``when`` must hold for it to match, and a
rule without ``when`` matches every job. The policy belongs to the silo: nothing the
orchestrator or a submitter sends can change it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsilo.approval._budget import MetricBudget
from fedsilo.approval._models import ApprovalRequest, Decision, Declassification, SigningStatus
from fedsilo.config import ByteSize, Classification, ResourceBounds, format_bytes
from fedsilo.config._yamlio import FieldIssue, load_yaml_mapping, validate_model
from fedsilo.errors import ConfigError
from fedsilo.jobs import SHARE_WITH_ALL, parse_public_key

__all__ = ["DEFAULT_RULE", "Condition", "Policy", "Rule", "load_policy"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

DEFAULT_RULE = "default"
"""The rule name an answer carries when no rule matched and the default decided."""

Fact = str | None  # what made a condition hold, in words; None when it does not hold


class Condition(BaseModel):
    """The ``when`` of a rule: every key given must hold for the rule to apply."""

    model_config = _FROZEN

    signature: tuple[SigningStatus, ...] | None = None
    author_in: tuple[str, ...] | None = None
    author_not_in: tuple[str, ...] | None = None
    reader_not_in: tuple[str, ...] | None = None
    job_name_in: tuple[str, ...] | None = None
    input_outside_silo: bool | None = None
    input_classification: tuple[Classification, ...] | None = None
    output_leaving: tuple[Classification, ...] | None = None
    declassification_any: bool | None = None
    declassification_not_in: tuple[Declassification, ...] | None = None
    epsilon_above: float | None = None
    epsilon_missing: bool | None = None
    secure_aggregation_missing: bool | None = None
    resources_above: ResourceBounds | None = None
    code_changed: bool | None = None
    output_bytes_above: ByteSize | None = None

    def facts(self, request: ApprovalRequest, silo: str) -> list[str] | None:
        """What makes every key hold, one sentence each; ``None`` if some key does not."""
        found: list[str] = []
        for key in type(self).model_fields:
            if getattr(self, key) is None:
                continue
            fact = _CHECKS[key](self, request, silo)
            if fact is None:
                return None
            found.append(fact)
        return found


def _names(items: tuple[str, ...]) -> str:
    return ", ".join(items) or "(none)"


def _signature(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.signature is not None
    if r.signing not in c.signature:
        return None
    key = f" (key {r.signing_key})" if r.signing_key else ""
    return f"the job's code is {r.signing.value}{key}"


def _author_in(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.author_in is not None
    return (
        f"author '{r.author}' is one of: {_names(c.author_in)}" if r.author in c.author_in else None
    )


def _author_not_in(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.author_not_in is not None
    if r.author in c.author_not_in:
        return None
    return f"author '{r.author}' is not one of: {_names(c.author_not_in)}"


def _reader_not_in(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    """Holds when the job's results would go to someone outside ``c.reader_not_in``: its
    author, a reader it names, or every submitter (``*``); a list holding ``*`` accepts all."""
    allowed = c.reader_not_in
    assert allowed is not None
    if SHARE_WITH_ALL in allowed:
        return None
    if SHARE_WITH_ALL in r.readers:
        return f"the job shares its results with every submitter, not only: {_names(allowed)}"
    outside = next((who for who in (r.author, *r.readers) if who not in allowed), None)
    if outside is None:
        return None
    return f"the job's results go to '{outside}', not one of: {_names(allowed)}"


def _job_name_in(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.job_name_in is not None
    if r.job_name not in c.job_name_in:
        return None
    return f"job name '{r.job_name}' is one of: {_names(c.job_name_in)}"


def _input_outside_silo(c: Condition, r: ApprovalRequest, silo: str) -> Fact:
    foreign = [i for i in r.inputs if i.storage != silo]
    if bool(foreign) != c.input_outside_silo:
        return None
    if foreign:
        first = foreign[0]
        return (
            f"input '{first.storage}:{first.dataset}' lives in the storage of "
            f"'{first.storage}', not of silo '{silo}'"
        )
    return f"every input lives in the storage of silo '{silo}'"


def _input_classification(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.input_classification is not None
    hit = next((i for i in r.inputs if i.classification in c.input_classification), None)
    if hit is None or hit.classification is None:
        return None
    return f"input '{hit.storage}:{hit.dataset}' is {hit.classification.value}"


def _output_leaving(c: Condition, r: ApprovalRequest, silo: str) -> Fact:
    assert c.output_leaving is not None
    hit = next(
        (o for o in r.outputs if o.destination != silo and o.classification in c.output_leaving),
        None,
    )
    if hit is None:
        return None
    return (
        f"output '{hit.name}' would leave silo '{silo}' for '{hit.destination}' "
        f"as {hit.classification.value}"
    )


def _declassification_any(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    if bool(r.declassifications) != c.declassification_any:
        return None
    if not r.declassifications:
        return "the job declassifies no output"
    d = r.declassifications[0]
    return f"the job declassifies output '{d.output}' from {d.from_.value} to {d.to.value}"


def _declassification_not_in(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    allowed = set(c.declassification_not_in or ())
    hit = next((d for d in r.declassifications if d not in allowed), None)
    if hit is None:
        return None
    return (
        f"the job declassifies output '{hit.output}' from {hit.from_.value} to "
        f"{hit.to.value}, which this silo's policy does not allow"
    )


def _epsilon_above(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.epsilon_above is not None
    epsilon = r.privacy.target_epsilon
    if epsilon is None or epsilon <= c.epsilon_above:
        return None
    return f"target epsilon {epsilon:g} is above this silo's cap of {c.epsilon_above:g}"


def _epsilon_missing(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    epsilon = r.privacy.target_epsilon
    if (epsilon is None) != c.epsilon_missing:
        return None
    return "the job sets no target epsilon" if epsilon is None else f"target epsilon {epsilon:g}"


def _secure_aggregation_missing(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    if r.privacy.secure_aggregation == c.secure_aggregation_missing:
        return None
    if r.privacy.secure_aggregation:
        return "the job uses secure aggregation"
    return "the job does not use secure aggregation: the orchestrator would see this silo's update"


def _resources_above(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.resources_above is not None
    for step, granted in sorted(r.resources.items()):
        over = c.resources_above.exceeded(granted)
        if over is not None:
            name, value, bound = over
            return (
                f"step '{step}' would get {name} {value} on compute '{granted.compute}', "
                f"above {bound}"
            )
    return None


def _code_changed(c: Condition, r: ApprovalRequest, silo: str) -> Fact:
    change = r.code_change
    if change.changed != c.code_changed:
        return None
    if change.first:
        return f"silo '{silo}' approved no job named '{r.job_name}' before"
    if not change.changed:
        return (
            f"the code is the code silo '{silo}' approved last for job name '{r.job_name}' "
            f"(job {change.previous_job_id})"
        )
    named = [*change.added, *change.removed, *change.modified]
    shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
    return (
        f"the code differs from the code silo '{silo}' approved last for job name "
        f"'{r.job_name}' (job {change.previous_job_id}): {shown}"
    )


def _output_bytes_above(c: Condition, r: ApprovalRequest, _silo: str) -> Fact:
    assert c.output_bytes_above is not None
    bound = format_bytes(c.output_bytes_above)
    for o in r.outputs:
        if o.destination == r.silo:
            continue
        if o.bytes is None:
            return (
                f"output '{o.name}' declares no size (no MODEL.json in the bundle), above {bound}"
            )
        if o.bytes > c.output_bytes_above:
            what = f" ({o.model.parameters:,} parameters)" if o.model is not None else ""
            return (
                f"output '{o.name}' would carry {format_bytes(o.bytes)}{what} an upload, "
                f"above {bound}"
            )
    return None


_CHECKS: dict[str, Callable[[Condition, ApprovalRequest, str], Fact]] = {
    "signature": _signature,
    "author_in": _author_in,
    "author_not_in": _author_not_in,
    "reader_not_in": _reader_not_in,
    "job_name_in": _job_name_in,
    "input_outside_silo": _input_outside_silo,
    "input_classification": _input_classification,
    "output_leaving": _output_leaving,
    "declassification_any": _declassification_any,
    "declassification_not_in": _declassification_not_in,
    "epsilon_above": _epsilon_above,
    "epsilon_missing": _epsilon_missing,
    "secure_aggregation_missing": _secure_aggregation_missing,
    "resources_above": _resources_above,
    "code_changed": _code_changed,
    "output_bytes_above": _output_bytes_above,
}
assert set(_CHECKS) == set(Condition.model_fields)


class Rule(BaseModel):
    """One rule: when its condition holds, ``decision`` decides, for ``reason``.

    ``expires_after_hours`` applies to ``manual`` rules: a person's decision on a job this
    rule held lapses after that long (unless the person set another expiry).
    """

    model_config = _FROZEN

    name: Annotated[str, Field(min_length=1)]
    when: Condition | None = None
    decision: Decision
    reason: str | None = None
    expires_after_hours: Annotated[float | None, Field(gt=0)] = None


class Policy(BaseModel):
    """A silo's whole approval policy: the keys it trusts, its rules, its default."""

    model_config = _FROZEN

    trusted_keys: dict[str, str] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    default: Decision = Decision.REJECT
    # how many metrics leave this silo in a report, and how precisely
    metrics: MetricBudget = MetricBudget()

    @model_validator(mode="after")
    def _check(self) -> Policy:
        for name, line in self.trusted_keys.items():
            try:
                parse_public_key(line, where=f"trusted key '{name}'")
            except ConfigError as exc:
                raise FieldIssue(("trusted_keys", name), exc.message) from None
        seen: dict[str, int] = {}
        for position, rule in enumerate(self.rules):
            if rule.name in seen:
                raise FieldIssue(
                    ("rules", position, "name"),
                    f"rule name '{rule.name}' is used twice (first by rule {seen[rule.name]}); "
                    "answers name the rule that decided, so names must be unique",
                )
            seen[rule.name] = position
        return self

    def rule(self, name: str) -> Rule | None:
        """The rule called ``name``, or ``None`` (also for :data:`DEFAULT_RULE`)."""
        return next((r for r in self.rules if r.name == name), None)

    def evaluate(self, request: ApprovalRequest, *, silo: str) -> tuple[Decision, str, str]:
        """The decision, the deciding rule's name and the reason, for ``request`` in ``silo``.

        Pure: no I/O, no clock. The first matching rule decides; else the default.
        """
        for rule in self.rules:
            facts = [] if rule.when is None else rule.when.facts(request, silo)
            if facts is None:
                continue
            return rule.decision, rule.name, rule.reason or _reason(rule, facts)
        return (
            self.default,
            DEFAULT_RULE,
            f"no rule of silo '{silo}' applies to this job; the policy's default is "
            f"{self.default.value}",
        )


_VERBS = {Decision.APPROVE: "approves", Decision.REJECT: "rejects", Decision.MANUAL: "holds"}


def _reason(rule: Rule, facts: list[str]) -> str:
    verb = _VERBS[rule.decision]
    suffix = " for a person to decide" if rule.decision is Decision.MANUAL else ""
    if not facts:
        return f"rule '{rule.name}' {verb} every job that reaches it{suffix}"
    return f"{'; '.join(facts)}: rule '{rule.name}' {verb} the job{suffix}"


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; :class:`ConfigError` with file, line and field if bad."""
    data, index = load_yaml_mapping(Path(path))
    return validate_model(Policy, data, Path(path), index)
