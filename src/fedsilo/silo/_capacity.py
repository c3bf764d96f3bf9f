"""A compute's capacity shared by the jobs of one silo: run side by side, or wait in line.

Each job step takes threads, GPUs and memory of a compute for as long as its worker lives
(the train step: the whole job). A step that does not fit waits in a first-come queue,
which ``fedsilo status`` shows; it starts as soon as the steps ahead of it leave room.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fedsilo.config import ResourceGrant, format_bytes
from fedsilo.silo._grant import ComputeOffer

__all__ = ["Allocation", "ComputePool", "PoolState", "Withdrawn"]


class Withdrawn(Exception):
    """The job stopped waiting for room (cancelled, or the agent is stopping)."""


@dataclass(frozen=True)
class Allocation:
    """What one job step holds of a compute: its grant, the GPU devices it got, and the
    job address it got on a machine of a compute that spans several."""

    holder: str
    grant: ResourceGrant
    devices: tuple[int, ...] = ()
    address: str | None = None


@dataclass(frozen=True)
class PoolState:
    """A compute's use at one moment, for ``fedsilo status``."""

    threads_used: int
    memory_used: int
    gpus_used: int
    running: tuple[str, ...] = ()
    queued: tuple[str, ...] = ()


@dataclass
class ComputePool:
    """The threads, GPUs and memory of one compute, handed out to job steps in turn."""

    offer: ComputeOffer
    addresses: tuple[str, ...] = ()  # job addresses of this machine, when it has any
    _held: dict[str, Allocation] = field(default_factory=dict)
    _queue: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def _free_devices(self) -> list[int]:
        taken = {d for a in self._held.values() for d in a.devices}
        return [d for d in self.offer.gpus if d not in taken]

    def _free_addresses(self) -> list[str]:
        taken = {a.address for a in self._held.values()}
        return [a for a in self.addresses if a not in taken]

    def _shortfall(self, grant: ResourceGrant) -> str | None:
        """What is missing for ``grant`` now, in words; ``None`` when it fits."""
        if self.addresses and not self._free_addresses():
            return "a job address, none free"
        threads = self.offer.threads - sum(a.grant.total_threads for a in self._held.values())
        memory = self.offer.memory - sum(a.grant.memory for a in self._held.values())
        devices = len(self._free_devices())
        if grant.total_threads > threads:
            return f"{grant.total_threads} threads, {threads} free"
        if grant.total_gpus > devices:
            return f"{grant.total_gpus} GPUs, {devices} free"
        if grant.memory > memory:
            return f"{format_bytes(grant.memory)} of memory, {format_bytes(memory)} free"
        return None

    def acquire(
        self,
        holder: str,
        grant: ResourceGrant,
        *,
        waiting: Callable[[str], bool] | None = None,
        every: float = 1.0,
    ) -> Allocation:
        """Take ``grant`` for ``holder`` once it fits and the holders queued before it started.

        While it waits, ``waiting(why)`` is called about every ``every`` seconds; if it
        returns False the holder leaves the queue and :class:`Withdrawn` is raised.
        """
        with self._cond:
            self._queue.append(holder)
            try:
                while True:
                    why = self._shortfall(grant)
                    first = self._queue[0] == holder
                    if why is None and first:
                        devices = tuple(self._free_devices()[: grant.total_gpus])
                        free = self._free_addresses()
                        address = free[0] if free else None
                        allocation = Allocation(holder, grant, devices, address)
                        self._held[holder] = allocation
                        return allocation
                    if why is None:
                        ahead = self._queue[: self._queue.index(holder)]
                        why = f"behind {', '.join(ahead)}"
                    else:
                        why = f"needs {why}"
                    self._cond.release()
                    try:
                        keep = waiting is None or waiting(why)
                    finally:
                        self._cond.acquire()
                    if not keep:
                        raise Withdrawn(holder)
                    deadline = time.monotonic() + every
                    self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            finally:
                self._queue.remove(holder)
                self._cond.notify_all()

    def release(self, holder: str) -> None:
        """Give back what ``holder`` holds (nothing if it holds nothing)."""
        with self._cond:
            if self._held.pop(holder, None) is not None:
                self._cond.notify_all()

    def state(self) -> PoolState:
        """What is used and who waits, now."""
        with self._cond:
            held = list(self._held.values())
            return PoolState(
                threads_used=sum(a.grant.total_threads for a in held),
                memory_used=sum(a.grant.memory for a in held),
                gpus_used=sum(len(a.devices) for a in held),
                running=tuple(a.holder for a in held),
                queued=tuple(self._queue),
            )
