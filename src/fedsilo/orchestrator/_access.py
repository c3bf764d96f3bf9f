"""Who may do what at the orchestrator: one table, route by route, checked in one place.

A caller's certificate says who it is (:class:`Caller`: a name and its roles). What it may
do is :data:`ROUTES`: for each route, the grants that let a caller through. Some grants
come with a role (any silo, any submitter, the federation's administrator); the others
hold only for the job the path names (its owner, the submitters its ``share_with`` names,
the silos it runs in). A job the caller holds no grant on does not exist for it: the
answer is the same 404 as for a job that does not exist, and the refusal is audited.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from fedsilo.api._messages import JobInfo, RoundInfo
from fedsilo.config import Role
from fedsilo.jobs import SHARE_WITH_ALL

__all__ = [
    "ROUTES",
    "Caller",
    "Decision",
    "Grant",
    "JobAccess",
    "View",
    "decide",
    "summary",
]


class Grant(StrEnum):
    """What lets a caller through a route."""

    SILO = "silo"  # any silo's agent (the silo's own kit)
    SUBMITTER = "submitter"  # any submitter
    ADMIN = "admin"  # the federation's administrator
    OWNER = "owner"  # the submitter of the job in the path
    READER = "reader"  # a submitter the job's share_with names (or every one, with *)
    JOB_SILO = "job-silo"  # a silo the job in the path runs in


_ROLE_OF = {Grant.SILO: Role.SILO, Grant.SUBMITTER: Role.SUBMITTER, Grant.ADMIN: Role.ADMIN}
# grants on one job, and the role a caller needs to hold any of them
_JOB_GRANTS = {Grant.OWNER: Role.SUBMITTER, Grant.READER: Role.SUBMITTER, Grant.JOB_SILO: Role.SILO}

_WORDS = {  # in the order a refusal lists them
    Grant.OWNER: "the job's owner",
    Grant.READER: "a submitter the job shares its results with",
    Grant.JOB_SILO: "a silo the job runs in",
    Grant.SUBMITTER: "a submitter",
    Grant.SILO: "a silo",
    Grant.ADMIN: "the federation's administrator",
}

S, U, A = Grant.SILO, Grant.SUBMITTER, Grant.ADMIN
OWN, READ, RUNS = Grant.OWNER, Grant.READER, Grant.JOB_SILO

ROUTES: dict[str, frozenset[Grant]] = {
    "GET /v1/whoami": frozenset({S, U, A}),
    # a silo's agent
    "GET /v1/agent/task": frozenset({S}),
    "POST /v1/agent/heartbeat": frozenset({S}),
    "POST /v1/agent/tasks/{task_id}/progress": frozenset({S}),
    "POST /v1/agent/tasks/{task_id}/result": frozenset({S}),
    "PUT /v1/agent/uploads/{digest}": frozenset({S}),
    "GET /v1/agent/jobs/{job_id}/bundle": frozenset({RUNS}),
    "GET /v1/agent/jobs/{job_id}/context": frozenset({RUNS}),
    "GET /v1/agent/jobs/{job_id}/params/{digest}": frozenset({RUNS}),
    # submitting
    "PUT /v1/uploads/{digest}": frozenset({U}),
    "POST /v1/jobs": frozenset({U}),
    # reading and controlling jobs: each list shows the caller what it may see
    "GET /v1/jobs": frozenset({S, U, A}),
    "GET /v1/jobs/{job_id}": frozenset({OWN, READ, A, RUNS}),
    "POST /v1/jobs/{job_id}/cancel": frozenset({OWN, A}),
    "GET /v1/jobs/{job_id}/model": frozenset({OWN, READ}),
    # a literal pipeline, driven by its owner's own loop
    "GET /v1/jobs/{job_id}/literal": frozenset({OWN}),
    "POST /v1/jobs/{job_id}/steps": frozenset({OWN}),
    "GET /v1/jobs/{job_id}/steps/{step_id}": frozenset({OWN}),
    "POST /v1/jobs/{job_id}/aggregate": frozenset({OWN}),
    "POST /v1/jobs/{job_id}/finish": frozenset({OWN}),
    # the federation
    "GET /v1/status": frozenset({S, U, A}),
    "POST /v1/check": frozenset({U, A}),
    # its members, changed while it runs
    "GET /v1/members": frozenset({A}),
    "POST /v1/members": frozenset({A}),
    "POST /v1/members/{member}/certificates": frozenset({A}),
    "POST /v1/members/{member}/revoke": frozenset({A}),
    "DELETE /v1/members/{member}": frozenset({A}),
}


@dataclass(frozen=True)
class Caller:
    """A caller, as recognised by its certificate's fingerprint: its name and roles."""

    name: str
    roles: frozenset[Role]

    @property
    def role(self) -> Role:
        """The role of its certificate (a submitter who is also admin: submitter)."""
        for role in (Role.SILO, Role.SUBMITTER, Role.ADMIN, Role.ORCHESTRATOR):
            if role in self.roles:
                return role
        raise ValueError(f"'{self.name}' holds no role")

    def describe(self) -> str:
        """``'alice' (submitter, admin)``."""
        held = [r.value for r in (Role.SILO, Role.SUBMITTER, Role.ADMIN) if r in self.roles]
        return f"'{self.name}' ({', '.join(held) or 'no role'})"


@dataclass(frozen=True)
class JobAccess:
    """What decides who reaches one job: its owner, who it is shared with, its silos."""

    owner: str
    readers: tuple[str, ...]
    silos: tuple[str, ...]

    @classmethod
    def of(cls, submitter: str, spec_json: str) -> JobAccess:
        """Read from a job's record; a spec that cannot be read shares with no one."""
        try:
            spec = json.loads(spec_json)
        except ValueError:
            spec = {}
        return cls.from_spec(submitter, spec)

    @classmethod
    def from_spec(cls, submitter: str, spec: object) -> JobAccess:
        """From a stored spec already read as JSON (anything but a mapping: no one)."""
        if not isinstance(spec, dict):
            spec = {}
        return cls(
            owner=submitter,
            readers=_names(spec.get("share_with")),
            silos=_names(spec.get("silos")),
        )

    def grants(self, caller: Caller) -> frozenset[Grant]:
        """The grants ``caller`` holds on this job."""
        held: set[Grant] = set()
        if Role.ADMIN in caller.roles:
            held.add(Grant.ADMIN)
        if Role.SUBMITTER in caller.roles:
            if caller.name == self.owner:
                held.add(Grant.OWNER)
            elif caller.name in self.readers or SHARE_WITH_ALL in self.readers:
                held.add(Grant.READER)
        if Role.SILO in caller.roles and caller.name in self.silos:
            held.add(Grant.JOB_SILO)
        return frozenset(held)


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(str(item) for item in value)


class View(StrEnum):
    """How much of a job a caller sees: everything, or its course without results."""

    FULL = "full"  # the owner and its readers: metrics, history, model
    SUMMARY = "summary"  # the administrator and the job's silos: no metric values


def view(grants: Iterable[Grant]) -> View | None:
    """The view that ``grants`` on a job give (``None``: the job is not the caller's to see)."""
    held = set(grants)
    if held & {Grant.OWNER, Grant.READER}:
        return View.FULL
    if held & {Grant.ADMIN, Grant.JOB_SILO}:
        return View.SUMMARY
    return None


def summary(info: JobInfo) -> JobInfo:
    """``info`` without its results: who took part in each round, how long it took, notes
    on the silos' updates and the round's privacy accounting, but no metric values (they
    derive from the silos' data, as the model does). What the administrator and a job's
    silos see."""
    rounds = [
        RoundInfo(
            round=r.round,
            seconds=r.seconds,
            train={silo: {} for silo in r.train},
            evaluate={silo: {} for silo in r.evaluate},
            privacy=r.privacy,
            notes=r.notes,
        )
        for r in info.history
    ]
    return info.model_copy(update={"history": rounds, "view": View.SUMMARY.value})


@dataclass(frozen=True)
class Decision:
    """The answer for one call: let through (``status`` 0), else the status and why.

    ``reason`` is what the caller is told; ``audited`` what the audit log records, which
    differs when a job that is not the caller's is answered as one that does not exist.
    """

    status: int
    reason: str = ""
    view: View | None = None
    audited: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 0


def _needs(route: str, grants: Iterable[Grant]) -> str:
    words = [_WORDS[g] for g in sorted(grants, key=list(_WORDS).index)]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return f"{route} needs {listed}"


def decide(route: str, caller: Caller, job: JobAccess | None, job_id: str | None) -> Decision:
    """Whether ``caller`` may call ``route`` (``"METHOD /template"``), on ``job`` when the
    path names one (``None``: it names none, or no such job exists).

    A route missing from :data:`ROUTES` is refused: new routes are closed until the table
    says who may call them.
    """
    needed = ROUTES.get(route)
    if needed is None:
        return Decision(403, f"{route} has no access rule; the orchestrator refuses it")
    by_role = {g for g in needed if g in _ROLE_OF and _ROLE_OF[g] in caller.roles}
    on_job = {g for g in needed if g in _JOB_GRANTS and _JOB_GRANTS[g] in caller.roles}
    if not by_role and not on_job:
        return Decision(403, f"{caller.describe()} may not: {_needs(route, needed)}")
    if job_id is None:
        return Decision(0, view=View.FULL)
    if job is None:
        return Decision(404, f"no job '{job_id}'")
    held = job.grants(caller)
    if held & needed:
        return Decision(0, view=view(held))
    if view(held) is None:
        # not the caller's job to know of: the answer of a job that does not exist
        return Decision(
            404,
            f"no job '{job_id}'",
            audited=f"job '{job_id}' is not {caller.describe()}'s: {_needs(route, needed)}",
        )
    return Decision(
        403, f"{caller.describe()} may see job '{job_id}' but not this: {_needs(route, needed)}"
    )
