"""One job in one silo: everything the agent holds for it, given back by one ``close``.

A job's tasks run one after the other on the job's own lane (a thread of its own), so a
job that trains for hours holds up neither the silo's other jobs, nor ``fedsilo check``,
nor the release that cancels it. What a job holds: its folder, its context and its
approval's clearance, its job worker (alive across rounds) with the compute capacity and
control group that worker runs in, and its secure-aggregation party with the masks
computed ahead for it.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedsilo.errors import FedsiloError
from fedsilo.silo._capacity import ComputePool
from fedsilo.silo._governance import Clearance
from fedsilo.silo._limits import JobGroup
from fedsilo.silo._network import JobNetwork
from fedsilo.silo._node import RemoteStep
from fedsilo.silo._workerproc import WorkerProcess

if TYPE_CHECKING:
    from fedsilo.api import JobContext
    from fedsilo.privacy.secagg import RoundMask, SecAggClient

__all__ = ["Holdings", "JobSession", "Step"]


@dataclass(eq=False)
class Holdings:
    """What a job step holds beside its worker: its compute capacity, its control group
    and, over several machines, its network namespace on this machine and its connection
    to each other machine's node service, which runs its ranks there."""

    holds: list[tuple[ComputePool, str]] = field(default_factory=list)
    group: JobGroup | None = None
    network: JobNetwork | None = None
    remotes: list[RemoteStep] = field(default_factory=list)

    def give_back(self) -> None:
        """Close the other machines' ranks, the control group and the network namespace;
        give the capacity back."""
        for remote in self.remotes:
            remote.close()
        if self.group is not None:
            self.group.close()
        if self.network is not None:
            self.network.close()
        for pool, holder in self.holds:
            pool.release(holder)


@dataclass(eq=False)
class Step:
    """A worker of the job on one compute, and what it holds (:class:`Holdings`)."""

    worker: WorkerProcess
    held: Holdings

    def remote_limit(self, wait: float = 2.0) -> str | None:
        """The limit another machine stopped its ranks at, if one did (within ``wait`` s)."""
        deadline = time.monotonic() + wait
        for remote in self.held.remotes:
            remote.poll(max(0.0, deadline - time.monotonic()))
            if remote.limit is not None:
                return remote.limit
        return None

    def end(self, *, graceful: bool) -> None:
        """Stop the worker's tree (and the other machines' ranks), then give back what it
        holds."""
        try:
            self.worker.stop(graceful=graceful)
        finally:
            self.held.give_back()


@dataclass(eq=False)
class JobSession:
    """What this silo holds for one job, until :meth:`close`.

    ``job_dir`` is the job's folder in the silo's storage: its code, its work folder
    (kept across agents, with a local DP accountant's spending), the parameters of its
    rounds (removed at the close) and the rounds whose unmasking the silo answered.
    """

    job_id: str
    job_dir: Path
    lane: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
    )
    context: JobContext | None = None  # the job's code, inputs and settings
    clearance: Clearance | None = None
    metric_names: tuple[str, ...] | None = None  # the metric names the approved job declares
    train: Step | None = None  # the worker that builds, trains and evaluates the model
    steps: list[Step] = field(default_factory=list)  # other steps' workers, while they run
    secagg: SecAggClient | None = None
    mask_ahead: tuple[int, Future[RoundMask]] | None = None
    masks_due: list[int] = field(default_factory=list)
    mask_words: tuple[int, int] | None = None  # words of a masked update, their bits
    last_used: float = field(default_factory=time.monotonic)
    running: int = 0  # tasks of the job being handled now
    closed: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def params(self) -> Path:
        """The folder of the job's parameters: the models received, the updates made."""
        return self.job_dir / "params"

    def worker(self) -> WorkerProcess:
        """The job's train worker, once the job is cleared and while the worker lives."""
        step = self.train
        if step is None or not step.worker.alive() or self.clearance is None:
            raise FedsiloError(f"the job worker of {self.job_id} is not running in this silo")
        return step.worker

    def remote_limit(self) -> str | None:
        """The limit another machine of the job's train step stopped its ranks at, if any."""
        step = self.train
        return step.remote_limit() if step is not None and step.held.remotes else None

    def end_train(self, *, graceful: bool = False) -> None:
        """Stop the job's train worker (a limit killed it, or the job ends)."""
        with self._lock:
            step, self.train = self.train, None
        if step is not None:
            step.end(graceful=graceful)

    def forget_party(self) -> None:
        """Drop the job's secure-aggregation party and the masks computed ahead for it."""
        ahead, self.mask_ahead = self.mask_ahead, None
        if ahead is not None:
            ahead[1].cancel()
        self.masks_due.clear()
        self.mask_words = None
        self.secagg = None

    def close(self, *, graceful: bool = True) -> bool:
        """Give back everything the job holds: its workers, its secure-aggregation party,
        its lane and the parameters in its folder. True if a worker of the job was still
        running; False if none was, or the job was closed already.

        A worker busy with a step is killed at once (the job was cancelled or failed);
        an idle one is asked to exit first when ``graceful``.
        """
        with self._lock:
            if self.closed.is_set():
                return False
            self.closed.set()
            steps, self.steps = self.steps, []
            had_worker = self.train is not None or bool(steps)
        try:
            self.end_train(graceful=graceful and self.running == 0)
            for step in steps:
                step.end(graceful=False)
        finally:
            self.forget_party()
            with contextlib.suppress(RuntimeError):
                self.lane.shutdown(wait=False, cancel_futures=True)
            shutil.rmtree(self.params, ignore_errors=True)
        return had_worker

    def attach(self, step: Step, *, train: bool) -> bool:
        """Hold ``step`` until the job ends (``train``) or until :meth:`end_step`.

        False if the job was closed meanwhile: the step is ended at once.
        """
        with self._lock:
            if not self.closed.is_set():
                if train:
                    self.train = step
                else:
                    self.steps.append(step)
                return True
        step.end(graceful=False)
        return False

    def end_step(self, step: Step) -> None:
        with self._lock:
            if step in self.steps:
                self.steps.remove(step)
        step.end(graceful=True)
