"""What a silo grants a job step: the compute's offer and the job's request, reconciled.

The silo computes the grant itself from its own compute spec and the facts of its own
machine; the job only asks. A request the compute cannot meet is refused before the job
starts, naming the silo, the compute and the field of the job spec. Pure functions, apart
from :meth:`Machine.probe`, which reads the machine once at the agent's start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedsilo.config import ComputeSpec, ResourceGrant, ResourceRequest, format_bytes
from fedsilo.config._resources import format_seconds

__all__ = ["ComputeOffer", "Machine", "ResourceRefused", "grant"]

#: Room kept for the agent and the system when a compute does not say its memory: a tenth
#: of the machine's, at least this much.
MIN_RESERVE = 1 << 30


@dataclass(frozen=True)
class Machine:
    """What the silo's machine has: cores this silo may use, memory jobs may use in all."""

    cores: int
    memory: int

    @classmethod
    def probe(cls, *, cores: int | None = None) -> Machine:
        """Read this machine: the cores this process may run on (or ``cores``, its share
        when several silos run on one machine) and its memory (or the memory limit of this
        process's control group, if lower), less a reserve for the agent and the system."""
        total = _memory_limit()
        reserve = max(MIN_RESERVE, total // 10)
        usable = max(total - reserve, total // 2)
        return cls(cores=cores or len(os.sched_getaffinity(0)), memory=usable)


def _memory_limit() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in _cgroup_memory_limits():
        if 0 < limit < total:
            total = limit
    return total


def _cgroup_memory_limits() -> list[int]:
    """The memory limits of this process's own control group (v1 and v2), where readable."""
    limits: list[int] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return limits
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates = [Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"]
        elif "memory" in controllers.split(","):
            candidates = [
                Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
            ]
        else:
            continue
        for file in candidates:
            try:
                text = file.read_text().strip()
            except OSError:
                continue
            if text.isdigit():
                limits.append(int(text))
    return limits


class ResourceRefused(Exception):
    """A request a compute cannot meet; ``field`` is the job spec's field that asks."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ComputeOffer:
    """A compute with the machine's facts filled in: what it has, what one job may take."""

    spec: ComputeSpec
    threads: int
    memory: int
    gpus: tuple[int, ...]
    job_threads: int
    job_memory: int
    job_gpus: int
    job_workers: int

    @classmethod
    def of(cls, spec: ComputeSpec, machine: Machine) -> ComputeOffer:
        threads = spec.threads or machine.cores
        memory = spec.memory or machine.memory
        caps = spec.per_job
        return cls(
            spec=spec,
            threads=threads,
            memory=memory,
            gpus=spec.gpus,
            job_threads=min(caps.threads or threads, threads),
            job_memory=min(caps.memory or memory, memory),
            job_gpus=min(len(spec.gpus) if caps.gpus is None else caps.gpus, len(spec.gpus)),
            job_workers=caps.workers or max(threads, len(spec.gpus), 1),
        )

    @property
    def name(self) -> str:
        return self.spec.name

    def default_memory(self, threads: int, gpus: int) -> int:
        """Memory for a step that does not say: the compute's memory in proportion to the
        share of its threads (or GPUs, if more) the step takes, at most one job's cap."""
        share = threads / self.threads
        if self.gpus:
            share = max(share, gpus / len(self.gpus))
        return max(1 << 20, min(self.job_memory, int(self.memory * min(share, 1.0))))


def grant(offer: ComputeOffer, request: ResourceRequest, *, silo: str, step: str) -> ResourceGrant:
    """What ``silo`` grants ``step`` on ``offer`` for ``request``; :class:`ResourceRefused`
    naming the field when the compute cannot meet it.

    Unset fields of the request take the compute's defaults: the threads one job may take
    shared among the ranks, one GPU per rank on a compute with GPUs, the compute's memory
    in proportion to the share of its threads (or GPUs) the step takes, the compute's step
    deadline.
    """
    where = f"compute '{offer.name}' of silo '{silo}'"
    field = f"resources.{step}"
    nodes = request.nodes
    if nodes > 1 and nodes > len(offer.spec.nodes):
        has = f"{len(offer.spec.nodes)} machines" if offer.spec.nodes else "one machine"
        raise ResourceRefused(
            f"{field}.nodes",
            f"the job asks for {nodes} machines in its {step} step; {where} has {has}",
        )
    cap = offer.spec.per_job.nodes
    if cap is not None and nodes > cap:
        raise ResourceRefused(
            f"{field}.nodes",
            f"the job asks for {nodes} machines in its {step} step; {where} gives one job "
            f"at most {cap}",
        )
    workers = request.workers
    if workers > offer.job_workers:
        raise ResourceRefused(
            f"{field}.workers",
            f"the job asks for {workers} ranks in its {step} step; {where} runs at most "
            f"{offer.job_workers} for one job",
        )
    threads = request.threads or max(1, offer.job_threads // workers)
    if threads * workers > offer.job_threads:
        asked = f"{workers} ranks x {threads} threads" if workers > 1 else f"{threads} threads"
        raise ResourceRefused(
            f"{field}.threads",
            f"the job asks for {asked} in its {step} step; {where} gives one job at most "
            f"{offer.job_threads} threads",
        )
    gpus = request.gpus if request.gpus is not None else (1 if offer.gpus else 0)
    if gpus and not offer.gpus:
        raise ResourceRefused(
            f"{field}.gpus",
            f"the job asks for {gpus} GPU{'s' if gpus > 1 else ''} per rank in its {step} "
            f"step; {where} has no GPUs (pick a compute of kind 'gpu' with computes: "
            f"{{{step}: gpu}})",
        )
    if gpus * workers > offer.job_gpus:
        raise ResourceRefused(
            f"{field}.gpus",
            f"the job asks for {gpus * workers} GPUs in its {step} step ({gpus} per rank, "
            f"{workers} rank{'s' if workers > 1 else ''}); {where} gives one job at most "
            f"{offer.job_gpus}",
        )
    memory = request.memory or offer.default_memory(threads * workers, gpus * workers)
    if memory > offer.job_memory:
        raise ResourceRefused(
            f"{field}.memory",
            f"the job asks for {format_bytes(memory)} of memory in its {step} step; {where} "
            f"gives one job at most {format_bytes(offer.job_memory)}",
        )
    limit = offer.spec.max_step_seconds
    seconds = request.max_step_seconds or limit
    if limit is not None and seconds is not None and seconds > limit:
        raise ResourceRefused(
            f"{field}.max_step_seconds",
            f"the job asks for {format_seconds(seconds)} a step in its {step} step; {where} "
            f"allows at most {format_seconds(limit)}",
        )
    return ResourceGrant(
        compute=offer.name,
        workers=workers,
        nodes=nodes,
        threads=threads,
        gpus=gpus,
        memory=memory,
        processes=offer.spec.processes,
        cpu=offer.spec.cpu,
        disk=offer.spec.disk,
        max_step_seconds=seconds,
    )
