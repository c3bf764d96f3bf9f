"""The federation spec: one YAML file naming the orchestrator, the silos and the submitters.

It is parsed once into frozen models. Every rule that keeps silos apart is checked here,
before anything is provisioned: no two participants share a name, a storage root (or one
inside another) or a compute, and every word is one the spec knows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator, model_validator

from fedsilo._suggest import did_you_mean, listing
from fedsilo.config._resources import ByteSize, Duration, JobCaps, format_bytes
from fedsilo.config._yamlio import FieldIssue, load_yaml_mapping, validate_model
from fedsilo.errors import ConfigError

__all__ = [
    "ORCHESTRATOR_NAME",
    "ApprovalSpec",
    "Classification",
    "ComputeSpec",
    "DatasetSpec",
    "FederationSpec",
    "LimitsSpec",
    "NodeSpec",
    "OrchestratorSpec",
    "SiloSpec",
    "StorageSpec",
    "load_federation",
]

ORCHESTRATOR_NAME = "orchestrator"
"""The participant name (and kit folder) of the orchestrator."""

PARTICIPANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
DATASET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

ParticipantName = Annotated[str, Field(pattern=PARTICIPANT_PATTERN)]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Classification(str, Enum):  # noqa: UP042 - a str mixin keeps `== "sensitive"` working
    """How far data may travel: ``sensitive`` stays in its silo, ``eyes_on`` goes anywhere.

    In strictness ``sensitive`` > ``intermediate`` > ``eyes_on``; :attr:`rank` orders them.
    """

    SENSITIVE = "sensitive"
    INTERMEDIATE = "intermediate"
    EYES_ON = "eyes_on"

    @property
    def rank(self) -> int:
        """Strictness: ``eyes_on`` 0, ``intermediate`` 1, ``sensitive`` 2."""
        return _RANKS[self]

    @classmethod
    def highest(cls, items: Iterable[Classification]) -> Classification:
        """The strictest of ``items``; ``eyes_on`` (the least strict) when there are none."""
        return max(items, key=lambda item: item.rank, default=cls.EYES_ON)

    def __str__(self) -> str:
        return self.value


_RANKS = {
    Classification.EYES_ON: 0,
    Classification.INTERMEDIATE: 1,
    Classification.SENSITIVE: 2,
}


# Folders of the operating system a storage root may not be, nor lie in.
_SYSTEM_FOLDERS = frozenset(
    {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "proc", "run", "sbin", "sys", "usr"}
)


class StorageSpec(BaseModel):
    """Where a participant's data lives; a relative ``root`` is relative to the workspace.

    A relative root stays inside the workspace (``..`` may not climb out of it); an
    absolute one is a folder of its own, never ``/`` nor a folder of the operating system
    (``/etc``, ``/usr``...).
    """

    model_config = _FROZEN

    root: Annotated[str, Field(min_length=1, max_length=4096)]

    @field_validator("root")
    @classmethod
    def _stays_in_place(cls, root: str) -> str:
        if "\x00" in root:
            raise ValueError("a storage root cannot hold a NUL character")
        expanded = PurePosixPath(os.path.expanduser(root))
        if not expanded.is_absolute():
            if PurePosixPath(os.path.normpath(str(expanded))).parts[:1] == ("..",):
                raise ValueError(
                    f"the storage root {root!r} climbs out of the workspace with '..'; "
                    "give a folder inside the workspace, or an absolute path"
                )
            return root
        parts = PurePosixPath(os.path.normpath(str(expanded))).parts
        if len(parts) == 1 or parts[1] in _SYSTEM_FOLDERS:
            raise ValueError(
                f"the storage root {root!r} is a folder of the operating system; "
                "give a folder of its own, such as /srv/fedsilo/NAME"
            )
        return root


# Variables a compute's environment may not set: the sandbox and the Python environment the
# job worker runs with depend on them, and fedsilo sets the others from the grant.
_RESERVED_ENVIRONMENT = frozenset(
    {"PATH", "HOME", "PYTHONPATH", "PYTHONHOME", "LD_PRELOAD", "LD_LIBRARY_PATH"}
)
_GRANTED_ENVIRONMENT = {
    "OMP_NUM_THREADS": "threads",
    "MKL_NUM_THREADS": "threads",
    "CUDA_VISIBLE_DEVICES": "gpus",
}

DEFAULT_PROCESSES = 512
"""Processes (threads count too) one job step may run at once unless its compute says."""

DEFAULT_MAX_STEP_SECONDS = 86400.0
"""How long one step of a job may run unless its compute says: a day."""


_IFNAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$"  # a Linux interface name


class NodeSpec(BaseModel):
    """One machine of a compute that spans several, on the silo's own network.

    ``address`` is the machine's address on that network, where its node service
    (``fedsilo node start``) listens on ``port``; ``interface`` is its network card there.
    ``job_addresses`` are spare addresses of that network reserved for the sandboxes of
    the job steps this machine runs (one per step running at once): a step's ranks reach
    the other machines' job addresses and nothing else.
    """

    model_config = _FROZEN

    name: ParticipantName
    address: IPvAnyAddress
    port: Annotated[int, Field(ge=1, le=65535)] = 7600
    interface: Annotated[str, Field(pattern=_IFNAME)]
    job_addresses: Annotated[tuple[IPvAnyAddress, ...], Field(min_length=1)]


class ComputeSpec(BaseModel):
    """What runs a participant's code, by name (unique in the federation), and its limits.

    ``kind`` is the label a job spec's ``computes`` picks it by (``cpu`` unless said
    otherwise). What it has: ``threads`` (the cores it owns; default: the machine's, or
    its share of them when ``fedsilo up`` runs several silos on one machine), ``gpus``
    (NVIDIA device indices; a compute of kind ``gpu`` must list them) and ``memory``
    (default: the machine's, less room for the agent and the system); with ``nodes``, each
    of its machines has that much, and the first is the agent's own. What one job may
    take: ``per_job`` caps threads, GPUs, memory and ranks; every step of a job runs with
    at most ``processes`` processes, ``cpu`` cores of CPU time (a quota; default none),
    ``disk`` bytes in its work folder and ``max_step_seconds``. ``environment`` holds
    variables set for every job worker on this compute.
    """

    model_config = _FROZEN

    name: Annotated[str, Field(min_length=1)]
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "cpu"
    environment: dict[Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")], str] = Field(
        default_factory=dict
    )
    threads: Annotated[int, Field(ge=1, le=4096)] | None = None
    gpus: tuple[Annotated[int, Field(ge=0, le=1023)], ...] = ()
    memory: ByteSize | None = None
    processes: Annotated[int, Field(ge=8, le=1_000_000)] = DEFAULT_PROCESSES
    cpu: Annotated[float, Field(gt=0, le=4096)] | None = None
    disk: ByteSize | None = None
    max_step_seconds: Duration | None = DEFAULT_MAX_STEP_SECONDS
    per_job: JobCaps = JobCaps()
    nodes: tuple[NodeSpec, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ComputeSpec:
        self._check_nodes()
        reserved = sorted(set(self.environment) & _RESERVED_ENVIRONMENT)
        if reserved:
            raise FieldIssue(
                ("environment", reserved[0]),
                f"compute '{self.name}' may not set {', '.join(reserved)}: the job sandbox "
                "and its Python environment depend on them",
            )
        for variable, field in _GRANTED_ENVIRONMENT.items():
            if variable in self.environment:
                raise FieldIssue(
                    ("environment", variable),
                    f"compute '{self.name}' may not set {variable}: fedsilo sets it from what "
                    f"the silo grants each job; declare '{field}' on the compute instead",
                )
        if len(set(self.gpus)) != len(self.gpus):
            raise FieldIssue(("gpus",), f"compute '{self.name}' lists a GPU twice: {self.gpus}")
        if self.kind == "gpu" and not self.gpus:
            raise FieldIssue(
                ("gpus",),
                f"compute '{self.name}' is of kind 'gpu' but lists no devices; "
                "declare them, e.g. gpus: [0, 1]",
            )
        caps = self.per_job
        for field, cap, has in (
            ("threads", caps.threads, self.threads),
            ("gpus", caps.gpus, len(self.gpus)),
            ("memory", caps.memory, self.memory),
        ):
            if cap is not None and has is not None and cap > has:
                shown = format_bytes(cap) if field == "memory" else cap
                owned = format_bytes(has) if field == "memory" else has
                raise FieldIssue(
                    ("per_job", field),
                    f"compute '{self.name}' lets one job take {field} {shown}, more than the "
                    f"{owned} it has",
                )
        return self

    def _check_nodes(self) -> None:
        if len(self.nodes) == 1:
            raise FieldIssue(
                ("nodes",),
                f"compute '{self.name}' lists one node; list every machine of the compute "
                "(the agent's own first), or none for a compute of one machine",
            )
        seen: dict[str, str] = {}
        for position, node in enumerate(self.nodes):
            for kind, value in (
                ("name", node.name),
                ("address", str(node.address)),
                *(("job_addresses", str(a)) for a in node.job_addresses),
            ):
                key = value if kind == "name" else f"address {value}"
                if key in seen:
                    raise FieldIssue(
                        ("nodes", position, kind),
                        f"compute '{self.name}': node '{node.name}' repeats {key} "
                        f"(also node '{seen[key]}'); every node and job address is unique",
                    )
                seen[key] = node.name

    def node(self, name: str) -> NodeSpec | None:
        """The node called ``name``, or ``None``."""
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def has_gpus(self) -> bool:
        """Whether jobs on this compute get GPUs (and its sandbox the NVIDIA devices)."""
        return bool(self.gpus)


class DatasetSpec(BaseModel):
    """A dataset a silo declares, with the lowest classification it may be registered at."""

    model_config = _FROZEN

    name: Annotated[str, Field(pattern=DATASET_PATTERN)]
    classification: Classification


class OrchestratorSpec(BaseModel):
    """The orchestrator's address, its storage (model parameters only) and its compute."""

    model_config = _FROZEN

    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8443
    storage: StorageSpec
    compute: ComputeSpec


class ApprovalSpec(BaseModel):
    """Where a silo's approval endpoint listens; without a port, the orchestrator's + 1 + i."""

    model_config = _FROZEN

    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int | None, Field(ge=1, le=65535)] = None


class LimitsSpec(BaseModel):
    """How a silo's agent enforces the limits of its computes.

    ``enforcement: auto`` puts each job step in a control group of its own where the agent
    can create one, and otherwise falls back to rlimits, saying so at start and in
    ``fedsilo status``; ``cgroups`` refuses to start without control groups.
    ``cgroup_parent`` names the control group (a path in the cgroup hierarchy, such as a
    delegated systemd unit's) under which the agent creates them; by default it is found.
    """

    model_config = _FROZEN

    enforcement: Literal["auto", "cgroups"] = "auto"
    cgroup_parent: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._@:/-]*$")] | None = None

    @model_validator(mode="after")
    def _no_climbing(self) -> LimitsSpec:
        if self.cgroup_parent is not None and ".." in self.cgroup_parent.split("/"):
            raise FieldIssue(("cgroup_parent",), "cgroup_parent may not contain '..'")
        return self


class SiloSpec(BaseModel):
    """One silo: its storage, its compute, the datasets it declares, how it runs jobs.

    ``sandbox`` is ``bubblewrap`` (job code confined: no network, only its inputs) or
    ``none``, an explicit development setting logged with every job. ``limits`` says how
    the limits of its computes are enforced. ``policy`` names the
    silo's approval policy file (relative to the federation spec); without it the silo
    gets the safe default policy. ``share_errors: true`` sends the message and traceback of
    a failed step (host paths removed) with the silo's own sentence, for development
    federations on data that is not sensitive; by default they stay in the silo.
    """

    model_config = _FROZEN

    name: ParticipantName
    storage: StorageSpec
    compute: ComputeSpec
    computes: tuple[ComputeSpec, ...] = ()
    datasets: tuple[DatasetSpec, ...] = ()
    approval: ApprovalSpec = ApprovalSpec()
    sandbox: Literal["bubblewrap", "none"] = "bubblewrap"
    limits: LimitsSpec = LimitsSpec()
    policy: str | None = None
    share_errors: bool = False

    @model_validator(mode="after")
    def _unique_datasets(self) -> SiloSpec:
        kinds: dict[str, str] = {}
        for position, compute in enumerate((self.compute, *self.computes)):
            if compute.kind in kinds:
                raise FieldIssue(
                    ("computes", position - 1, "kind") if position else ("compute", "kind"),
                    f"silo '{self.name}' has two computes of kind '{compute.kind}' "
                    f"({kinds[compute.kind]} and {compute.name}); a job picks a compute by kind",
                )
            kinds[compute.kind] = compute.name
        seen: set[str] = set()
        for position, dataset in enumerate(self.datasets):
            if dataset.name in seen:
                raise FieldIssue(
                    ("datasets", position, "name"),
                    f"silo '{self.name}' declares dataset '{dataset.name}' twice",
                )
            seen.add(dataset.name)
        return self

    def all_computes(self) -> tuple[ComputeSpec, ...]:
        """The silo's default compute, then the others."""
        return (self.compute, *self.computes)

    def compute_of_kind(self, kind: str | None) -> ComputeSpec | None:
        """The compute of ``kind`` (``None``: the default compute); ``None`` if it has none."""
        if kind is None:
            return self.compute
        return next((c for c in self.all_computes() if c.kind == kind), None)

    def dataset(self, name: str) -> DatasetSpec | None:
        """The declared dataset called ``name``, or ``None`` when the silo does not declare it."""
        return next((d for d in self.datasets if d.name == name), None)


class FederationSpec(BaseModel):
    """A whole federation: the orchestrator, at least one silo, the submitters and the
    federation's administrators.

    An administrator named in ``admins`` alone gets a kit of its own that lists and cancels
    jobs and sees every silo's status but submits nothing and reads no model; one named in
    ``submitters`` too holds both roles with the one submitter kit.
    """

    model_config = _FROZEN

    name: Annotated[str, Field(pattern=DATASET_PATTERN)]
    orchestrator: OrchestratorSpec
    silos: Annotated[tuple[SiloSpec, ...], Field(min_length=1)]
    submitters: tuple[ParticipantName, ...] = ("submitter",)
    admins: tuple[ParticipantName, ...] = ()

    @model_validator(mode="after")
    def _silos_apart(self) -> FederationSpec:
        self._check_names()
        self._check_computes()
        self._check_ports()
        self.check_storage_roots(PurePosixPath("/workspace"))
        return self

    @property
    def admin_only(self) -> tuple[str, ...]:
        """The administrators who are not submitters: each gets a kit of its own."""
        return tuple(name for name in self.admins if name not in self.submitters)

    def approval_address(self, silo: str) -> tuple[str, int]:
        """The host and port of ``silo``'s approval endpoint."""
        for position, spec in enumerate(self.silos):
            if spec.name == silo:
                port = spec.approval.port or self.orchestrator.port + 1 + position
                return spec.approval.host, port
        raise ConfigError(
            f"federation '{self.name}' has no silo '{silo}'{did_you_mean(silo, self.silo_names)}"
        )

    def _check_ports(self) -> None:
        taken = {(self.orchestrator.host, self.orchestrator.port): "the orchestrator"}
        for position, silo in enumerate(self.silos):
            host, port = self.approval_address(silo.name)
            if port > 65535:
                raise FieldIssue(
                    ("silos", position, "approval"),
                    f"silo '{silo.name}' gets approval port {port}; set approval.port",
                )
            if (host, port) in taken:
                raise FieldIssue(
                    ("silos", position, "approval", "port"),
                    f"the approval endpoint of silo '{silo.name}' would listen on {host}:{port}, "
                    f"already taken by {taken[(host, port)]}; set approval.port",
                )
            taken[(host, port)] = f"the approval endpoint of silo '{silo.name}'"

    def _check_names(self) -> None:
        silo_names: dict[str, int] = {}
        for position, silo in enumerate(self.silos):
            if silo.name in silo_names:
                raise FieldIssue(
                    ("silos", position, "name"),
                    f"duplicate silo name '{silo.name}' (also silos.{silo_names[silo.name]})",
                )
            if silo.name == ORCHESTRATOR_NAME:
                raise FieldIssue(
                    ("silos", position, "name"),
                    f"participant name '{silo.name}' is reserved for the orchestrator",
                )
            silo_names[silo.name] = position
        taken = {name: f"silos.{position}" for name, position in silo_names.items()}
        taken[ORCHESTRATOR_NAME] = "the orchestrator"
        for position, submitter in enumerate(self.submitters):
            if submitter in taken:
                raise FieldIssue(
                    ("submitters", position),
                    f"participant name '{submitter}' is used twice (also {taken[submitter]})",
                )
            taken[submitter] = f"submitters.{position}"
        named: set[str] = set()
        for position, admin in enumerate(self.admins):
            if admin in named:
                raise FieldIssue(("admins", position), f"admin '{admin}' is listed twice")
            named.add(admin)
            if admin in taken and admin not in self.submitters:
                raise FieldIssue(
                    ("admins", position),
                    f"participant name '{admin}' is used twice (also {taken[admin]}); an "
                    "administrator is a person of its own or one of the submitters",
                )

    def _check_computes(self) -> None:
        computes = {self.orchestrator.compute.name: "the orchestrator"}
        for position, silo in enumerate(self.silos):
            for index, compute in enumerate(silo.all_computes()):
                name = compute.name
                if name in computes:
                    where = ("compute",) if index == 0 else ("computes", index - 1)
                    raise FieldIssue(
                        ("silos", position, *where, "name"),
                        f"silo '{silo.name}' shares compute '{name}' with {computes[name]}; "
                        "each compute belongs to one participant",
                    )
                computes[name] = f"silo '{silo.name}'"

    def storage_roots(self, workspace: PurePosixPath | Path) -> dict[str, PurePosixPath | Path]:
        """Each participant's normalised storage root, relative ones placed under ``workspace``."""
        roots: dict[str, PurePosixPath | Path] = {
            ORCHESTRATOR_NAME: _place(self.orchestrator.storage.root, workspace)
        }
        for silo in self.silos:
            roots[silo.name] = _place(silo.storage.root, workspace)
        return roots

    def check_storage_roots(self, workspace: PurePosixPath | Path) -> None:
        """Raise :class:`FieldIssue` if two storage roots are equal or one holds another."""
        roots = self.storage_roots(workspace)
        written = {ORCHESTRATOR_NAME: self.orchestrator.storage.root}
        written |= {silo.name: silo.storage.root for silo in self.silos}
        owners: list[tuple[str, tuple[str | int, ...]]] = [
            (ORCHESTRATOR_NAME, ("orchestrator", "storage", "root"))
        ]
        owners += [(s.name, ("silos", i, "storage", "root")) for i, s in enumerate(self.silos)]
        for later in range(1, len(owners)):
            name, loc = owners[later]
            for other, _ in owners[:later]:
                a, b = roots[name], roots[other]
                if a == b or _inside(a, b) or _inside(b, a):
                    how = "is the same folder as" if a == b else "is nested with"
                    who = "the orchestrator" if other == ORCHESTRATOR_NAME else f"silo '{other}'"
                    raise FieldIssue(
                        loc,
                        f"the storage root of silo '{name}' ({written[name]!r}) {how} the "
                        f"storage root of {who} ({written[other]!r}); every participant "
                        "needs its own storage",
                    )

    def silo(self, name: str) -> SiloSpec:
        """The silo called ``name``; :class:`ConfigError` listing the known silos otherwise."""
        for silo in self.silos:
            if silo.name == name:
                return silo
        raise ConfigError(
            f"federation '{self.name}' has no silo '{name}'{did_you_mean(name, self.silo_names)}; "
            f"its silos: {listing(self.silo_names)}"
        )

    @property
    def silo_names(self) -> tuple[str, ...]:
        """The silos' names, in the order of the spec."""
        return tuple(s.name for s in self.silos)


def _place(root: str, workspace: PurePosixPath | Path) -> PurePosixPath | Path:
    expanded = os.path.expanduser(root)
    if isinstance(workspace, Path):
        return (workspace / expanded).resolve()
    return PurePosixPath(os.path.normpath(str(workspace / expanded)))


def _inside(child: PurePosixPath | Path, parent: PurePosixPath | Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def load_federation(path: str | Path) -> FederationSpec:
    """Read and check a federation spec; any problem is a :class:`ConfigError` with its line."""
    file = Path(path)
    data, index = load_yaml_mapping(file)
    return validate_model(FederationSpec, data, file, index)
