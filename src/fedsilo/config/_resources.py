"""Resources: what a silo's compute offers, what a job asks for, and what a silo grants.

A compute in ``federation.yaml`` declares what it has (``threads``, ``gpus``, ``memory``)
and what one job may take (``per_job``, and the limits every job step runs under:
``processes``, ``cpu``, ``disk``, ``max_step_seconds``). A job spec asks for
``resources``, for every step or per step. The silo, never the submitter, turns the two
into a :class:`ResourceGrant` per step, which its approval endpoint sees and the kernel
enforces.

Sizes are written ``8GiB``, ``512MiB``, ``2G`` (binary: K, M, G, T, with or without ``i``
and ``B``) or ``4GB`` (decimal, with ``B`` and no ``i``), or as a number of bytes.
Durations are seconds, or ``90s``, ``30m``, ``8h``, ``2d``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = [
    "ByteSize",
    "Duration",
    "JobCaps",
    "ResourceBounds",
    "ResourceGrant",
    "ResourceRequest",
    "format_bytes",
    "format_seconds",
    "local_cores",
    "parse_bytes",
    "parse_seconds",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTkmgt]?)(i?)([Bb]?)\s*$")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bytes(value: Any) -> int:
    """A size in bytes from ``8GiB``, ``512M``, ``4GB`` or a number; ``ValueError`` if not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write it like 8GiB, 512MiB or 1073741824")
    if isinstance(value, int | float):
        number, base, power = float(value), 1024, 0
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        digits, unit, binary, b = match.groups()
        number, power = float(digits), _POWERS[unit.lower()]
        base = 1000 if (b and not binary and unit) else 1024
    else:
        raise ValueError(
            f"{value!r} is not a size; write it like 8GiB, 512MiB, 2G, 4GB or a number of bytes"
        )
    size = number * base**power
    if not math.isfinite(size) or size < 1 or size > 2**62:
        raise ValueError(f"{value!r} is not a size between 1 byte and 4 EiB")
    return int(size)


def parse_seconds(value: Any) -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``8h`` or ``2d``; ``ValueError`` if not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write it like 3600, 30m or 8h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration; write it like 3600, 90s, 30m, 8h or 2d")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 366 * 86400:
        raise ValueError(f"{value!r} is not a duration between 0 and a year")
    return seconds


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
"""A size in bytes, written in a spec as ``8GiB``, ``512MiB``, ``4GB`` or a number."""

Duration = Annotated[float, BeforeValidator(parse_seconds)]
"""A duration in seconds, written in a spec as a number or ``90s``, ``30m``, ``8h``."""


def local_cores(silos: int) -> int:
    """A silo's share of this machine's cores when ``silos`` silos share it (at least 1).

    ``fedsilo up`` gives each silo this share, and ``fedsilo sim`` runs each silo's torch
    on as many threads, so both compute alike.
    """
    return max(1, len(os.sched_getaffinity(0)) // max(1, silos))


def format_bytes(size: int) -> str:
    """``size`` as a person reads it: ``2 GiB``, ``1.5 GiB``, ``300 MiB``."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        scaled = size / 1024**power
        if scaled >= 1:
            return f"{scaled:.{0 if scaled == int(scaled) or scaled >= 100 else 1}f} {unit}"
    return f"{size} B"


def format_seconds(seconds: float) -> str:
    """``seconds`` as a person reads it: ``45 s``, ``30 min``, ``8 h``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class JobCaps(BaseModel):
    """The most one job may take of a compute; unset: everything the compute has."""

    model_config = _FROZEN

    threads: Annotated[int, Field(ge=1, le=4096)] | None = None
    gpus: Annotated[int, Field(ge=0, le=1024)] | None = None
    memory: ByteSize | None = None
    workers: Annotated[int, Field(ge=1, le=1024)] | None = None
    nodes: Annotated[int, Field(ge=1, le=1024)] | None = None


class ResourceRequest(BaseModel):
    """What a job asks for one step in each silo (the silo decides what it grants).

    ``workers`` is the number of ranks (processes under torch.distributed) on each of
    ``nodes`` machines of the compute; ``threads`` and ``gpus`` are per rank; ``memory`` is
    for the whole step on each machine, every rank there together.
    ``max_step_seconds`` may ask for less time than the silo's limit, never more. Unset
    fields take the compute's defaults: every thread and all the memory one job may take,
    one GPU per rank on a compute with GPUs.
    """

    model_config = _FROZEN

    workers: Annotated[int, Field(ge=1, le=1024)] = 1
    nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    threads: Annotated[int, Field(ge=1, le=4096)] | None = None
    gpus: Annotated[int, Field(ge=0, le=1024)] | None = None
    memory: ByteSize | None = None
    max_step_seconds: Duration | None = None


class ResourceGrant(BaseModel):
    """What a silo grants one step of a job on one of its computes, and enforces.

    ``workers`` ranks run on each of ``nodes`` machines; ``threads`` and ``gpus`` are per
    rank, ``memory`` and ``processes`` for the step's whole process tree on each machine,
    ``cpu`` a CPU quota in cores (``None``: no quota), ``disk`` the
    most the job's work folder may hold, ``max_step_seconds`` the deadline of each step
    (preprocessing, one round's training, an evaluation).
    """

    model_config = _FROZEN

    compute: str
    workers: int = 1
    nodes: int = 1
    threads: int = 1
    gpus: int = 0
    memory: int
    processes: int
    cpu: float | None = None
    disk: int | None = None
    max_step_seconds: float | None = None

    @property
    def total_threads(self) -> int:
        """Threads of every rank of one machine: what the step takes of its threads."""
        return self.threads * self.workers

    @property
    def total_gpus(self) -> int:
        """GPUs of every rank of one machine together."""
        return self.gpus * self.workers

    def describe(self) -> str:
        """One line a person reads: ``2 ranks x 4 threads, 1 GPU each, 8 GiB, ...``."""
        parts = [
            f"{self.workers} ranks x {self.threads} threads"
            if self.workers > 1
            else f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        ]
        if self.nodes > 1:
            parts[0] = f"{self.nodes} nodes x {parts[0]}"
        if self.gpus:
            each = " each" if self.workers > 1 else ""
            parts.append(f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}{each}")
        parts.append(f"memory {format_bytes(self.memory)}")
        parts.append(f"{self.processes} processes")
        if self.cpu is not None:
            parts.append(f"cpu {self.cpu:g} cores")
        if self.disk is not None:
            parts.append(f"disk {format_bytes(self.disk)}")
        if self.max_step_seconds is not None:
            parts.append(f"{format_seconds(self.max_step_seconds)} a step")
        return ", ".join(parts)


class ResourceBounds(BaseModel):
    """Bounds a silo's policy puts on a grant (``resources_above`` in a rule's ``when``).

    Each field bounds the grant's field of the same name; ``threads`` and ``gpus`` bound
    every rank of one machine together (what the step takes of it), ``workers`` every
    rank of the step on every machine.
    """

    model_config = _FROZEN

    workers: Annotated[int, Field(ge=0)] | None = None
    nodes: Annotated[int, Field(ge=0)] | None = None
    threads: Annotated[int, Field(ge=0)] | None = None
    gpus: Annotated[int, Field(ge=0)] | None = None
    memory: ByteSize | None = None
    processes: Annotated[int, Field(ge=0)] | None = None
    cpu: Annotated[float, Field(ge=0)] | None = None
    disk: ByteSize | None = None
    max_step_seconds: Duration | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> ResourceBounds:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                "resources_above needs at least one bound, e.g. {gpus: 1, memory: 16GiB}"
            )
        return self

    def exceeded(self, grant: ResourceGrant) -> tuple[str, str, str] | None:
        """The first ``(field, granted, bound)`` of ``grant`` above these bounds, if any."""
        granted: dict[str, float] = {
            "workers": grant.workers * grant.nodes,
            "nodes": grant.nodes,
            "threads": grant.total_threads,
            "gpus": grant.total_gpus,
            "memory": grant.memory,
            "processes": grant.processes,
            # no quota, no disk limit, no deadline: more than any bound
            "cpu": math.inf if grant.cpu is None else grant.cpu,
            "disk": math.inf if grant.disk is None else grant.disk,
            "max_step_seconds": math.inf
            if grant.max_step_seconds is None
            else grant.max_step_seconds,
        }
        for name in type(self).model_fields:
            bound = getattr(self, name)
            value = granted[name]
            if bound is None or value <= bound:
                continue
            if math.isinf(value):
                shown = "no limit"
            elif name in ("memory", "disk"):
                shown = format_bytes(int(value))
            elif name == "max_step_seconds":
                shown = format_seconds(value)
            else:
                shown = f"{value:g}"
            if name in ("memory", "disk"):
                return name, shown, format_bytes(int(bound))
            if name == "max_step_seconds":
                return name, shown, format_seconds(bound)
            return name, shown, f"{bound:g}"
        return None
