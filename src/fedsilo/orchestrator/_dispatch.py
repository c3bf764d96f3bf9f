"""Dispatch and presence: each silo's queue of tasks, who waits on which, who is online.

:class:`Dispatch` holds in memory what the hot paths need (a silo's long-poll takes its
next task without a query) and writes the database as the record: a task when offered,
and its assignment with its result. It knows nothing of jobs but their ids; the
orchestrator tells it what to do when a restarted agent is handed its tasks again and
when an agent reports progress on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

from fedsilo.api._messages import (
    JobTask,
    PingTask,
    SiloReport,
    SiloStatus,
    TaskResult,
    parse_task,
)
from fedsilo.audit import AuditLog
from fedsilo.errors import SiloUnavailable
from fedsilo.orchestrator._db import Store, TaskRow

__all__ = [
    "HEARTBEAT_SECONDS",
    "OFFLINE_AFTER_SECONDS",
    "ONLINE_GRACE_SECONDS",
    "Dispatch",
]

log = logging.getLogger("fedsilo.orchestrator")

# the fields a task's or a result's record leaves out: parameters sent inline (they are
# blobs of their own once received, named by ``params_digest``)
_INLINE = {"params"}

HEARTBEAT_SECONDS = 1.0
OFFLINE_AFTER_SECONDS = 5.0
ONLINE_GRACE_SECONDS = 15.0


class _Lateness:
    """How long the event loop has run late, summed: time in which it could hear no one.

    A ticker wakes every :attr:`TICK` seconds and adds how much later than asked it woke.
    While the loop is starved (a machine running many silos' job workers, a burst of
    requests) heartbeats wait in its sockets; that time must not count as a silo's silence.
    """

    TICK = 0.25

    def __init__(self) -> None:
        self._total = 0.0
        self._last: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the ticker on the running loop (once; a no-op outside a loop)."""
        if self._task is None:
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        self._last = time.monotonic()
        while True:
            await asyncio.sleep(self.TICK)
            now = time.monotonic()
            self._total += max(0.0, now - self._last - self.TICK)
            self._last = now

    def now(self) -> float:
        """Seconds late so far, counting a lag under way (the ticker overdue right now)."""
        if self._last is None:
            return self._total
        return self._total + max(0.0, time.monotonic() - self._last - self.TICK)


class Dispatch:
    """The federation's silos as the orchestrator deals with them: their queues of tasks,
    the results awaited, and their presence. Every method runs on the server's loop.

    ``on_rejoin(silo, task)`` is told of each open task handed again to a silo whose
    agent restarted; ``on_progress(job_id, detail)`` of an agent's word on a job's task.
    """

    def __init__(
        self,
        *,
        federation: str,
        silos: Iterable[str],
        store: Store,
        audit: AuditLog,
        on_rejoin: Callable[[str, PingTask | JobTask], None],
        on_progress: Callable[[str, str], None],
    ) -> None:
        self.federation = federation
        self.silos = tuple(silos)
        self.store = store
        self.audit = audit
        self._on_rejoin = on_rejoin
        self._on_progress = on_progress
        self._last_seen: dict[str, float] = {}
        self._lateness = _Lateness()
        self._late_at_seen: dict[str, float] = {}  # the loop's lateness when last seen
        self._busy: dict[str, bool] = {}
        self._sandbox: dict[str, str] = {}
        self._reports: dict[str, SiloReport] = {}
        self._wakeup: dict[str, asyncio.Event] = {s: asyncio.Event() for s in self.silos}
        self._queues: dict[str, deque[tuple[str, str]]] = {s: deque() for s in self.silos}
        self._open: dict[str, str] = {}  # task id -> silo, for tasks not yet answered
        self._task_jobs: dict[str, str] = {}  # task id -> job id, for open tasks
        self._assigned_at: dict[str, float] = {}  # task id -> when its silo took it
        self._waiters: dict[str, asyncio.Future[TaskResult]] = {}
        # tasks handed to an agent and not answered yet, to hand again if it restarts
        self._handed: dict[str, tuple[str, str]] = {}  # task id -> (silo, message JSON)
        self._instance: dict[str, str] = {}  # silo -> the id of its running agent

    # -- presence ---------------------------------------------------------------------------

    def seen(
        self,
        silo: str,
        *,
        busy: bool | None = None,
        sandbox: str | None = None,
        report: SiloReport | None = None,
        instance: str | None = None,
    ) -> None:
        """Record that ``silo``'s agent is connected (a poll, an upload or a heartbeat),
        and what it reports of its computes.

        ``instance`` identifies the agent's process: a new one means the agent restarted,
        and the tasks the old one had taken are handed to the new one (which takes their
        jobs up again), so no round waits on a task a dead process held.
        """
        if instance is not None:
            before = self._instance.get(silo)
            self._instance[silo] = instance
            if before is not None and before != instance:
                self._hand_again(silo)
        self._lateness.start()
        self._last_seen[silo] = time.time()
        self._late_at_seen[silo] = self._lateness.now()
        if busy is not None:
            self._busy[silo] = busy
        if sandbox is not None:
            self._sandbox[silo] = sandbox
        if report is not None:
            self._reports[silo] = report
            self._sandbox[silo] = report.sandbox

    def _hand_again(self, silo: str) -> None:
        """Queue again, first, the open tasks ``silo``'s previous agent had taken."""
        again = [
            (task_id, message)
            for task_id, (owner, message) in self._handed.items()
            if owner == silo and self._open.get(task_id) == silo
        ]
        queue = self._queues[silo]
        for task_id, message in reversed(again):
            del self._handed[task_id]
            self._assigned_at.pop(task_id, None)
            queue.appendleft((task_id, message))
            self._on_rejoin(silo, parse_task(message))
        if again:
            log.warning(
                "silo '%s' restarted its agent; %d open task(s) handed to the new one",
                silo,
                len(again),
            )
            self.audit.append("silo.restarted", silo=silo, tasks=[task_id for task_id, _ in again])
            self._wakeup[silo].set()
        else:
            self.audit.append("silo.restarted", silo=silo, tasks=[])

    # -- membership -------------------------------------------------------------------------

    def admit_silo(self, silo: str) -> None:
        """Take a silo added to the federation while it runs: it may poll from now on."""
        if silo not in self.silos:
            self.silos = (*self.silos, silo)
        self._wakeup.setdefault(silo, asyncio.Event())
        self._queues.setdefault(silo, deque())

    def expel_silo(self, silo: str, reason: str, *, removed: bool) -> list[str]:
        """Stop dealing with ``silo``'s agent (its certificate revoked, or the silo
        ``removed`` from the federation): its open tasks fail with ``reason``, its queue is
        emptied and a poll it has waiting returns. A removed silo is no longer one of the
        federation's; a revoked one stays, offline until it holds a valid certificate.
        Returns the ids of the tasks that failed."""
        failed = [task_id for task_id, owner in self._open.items() if owner == silo]
        for task_id in failed:
            self.deliver(silo, task_id, TaskResult.failed(reason))
        queue = self._queues.get(silo)
        if queue is not None:
            queue.clear()  # a poll that waits holds it: nothing left to hand out
        self._last_seen.pop(silo, None)
        self._instance.pop(silo, None)
        event = self._wakeup.get(silo)
        if removed:
            self.silos = tuple(s for s in self.silos if s != silo)
            self._queues.pop(silo, None)
            self._wakeup.pop(silo, None)
        if event is not None:
            event.set()
        if failed:
            log.warning("silo '%s': %d open task(s) failed: %s", silo, len(failed), reason)
        return failed

    def silent_for(self, silo: str) -> float:
        """Seconds since ``silo`` was last heard (infinite if never)."""
        last = self._last_seen.get(silo)
        return math.inf if last is None else max(0.0, time.time() - last)

    def online(self, silo: str) -> bool:
        """Whether ``silo`` was heard within :data:`OFFLINE_AFTER_SECONDS`.

        Only the time the orchestrator could listen counts: while its own loop ran late,
        the silo's heartbeats were waiting to be read, not missing.
        """
        last = self._last_seen.get(silo)
        if last is None:
            return False
        deaf = self._lateness.now() - self._late_at_seen.get(silo, 0.0)
        return time.time() - last - deaf < OFFLINE_AFTER_SECONDS

    def silo_statuses(self, only: Iterable[str] | None = None) -> list[SiloStatus]:
        """Each silo's status (``only``: of those silos alone)."""
        wanted = self.silos if only is None else [s for s in self.silos if s in set(only)]
        return [
            SiloStatus(
                name=s,
                online=self.online(s),
                last_seen=self._last_seen.get(s),
                busy=self._busy.get(s, False),
                sandbox=self._sandbox.get(s),
                report=self._reports.get(s),
            )
            for s in wanted
        ]

    async def await_online(self, silos: Iterable[str]) -> None:
        """Wait briefly for every silo's agent; :class:`SiloUnavailable` names one missing."""
        deadline = time.monotonic() + ONLINE_GRACE_SECONDS
        while True:
            offline = [s for s in silos if not self.online(s)]
            if not offline:
                return
            if time.monotonic() > deadline:
                raise SiloUnavailable(
                    offline[0],
                    "is offline: its agent is not connected "
                    f"(offline: {', '.join(offline)}); its silo's administrator starts it "
                    "(`fedsilo silo start --kit KIT` on the silo's machine)",
                )
            await asyncio.sleep(0.2)

    # -- tasks ------------------------------------------------------------------------------

    def offer(
        self, tasks: Sequence[tuple[str, PingTask | JobTask]], *, wait: bool = True
    ) -> list[str]:
        """Queue ``(silo, message)`` pairs in one transaction; return their task ids."""
        now = time.time()
        self.store.add_tasks(
            [
                TaskRow(
                    id=message.task_id,
                    job_id=message.job_id,
                    silo=silo,
                    kind=message.kind.value,
                    round=message.round,
                    state="pending",
                    # a small model's bytes travel with the task, not into its record
                    message_json=message.model_dump_json(exclude=_INLINE),
                    created_at=now,
                )
                for silo, message in tasks
            ]
        )
        loop = asyncio.get_running_loop()
        for silo, message in tasks:
            self._open[message.task_id] = silo  # its result is taken, waited for or not
            if wait:
                self._waiters[message.task_id] = loop.create_future()
                if message.job_id is not None:
                    self._task_jobs[message.task_id] = message.job_id
            if silo not in self._queues:  # removed from the federation while its job ran
                error = f"silo '{silo}' is no longer a member of federation '{self.federation}'"
                # answered once the caller holds the task's waiter
                loop.call_soon(self.deliver, silo, message.task_id, TaskResult.failed(error))
                continue
            self._queues[silo].append((message.task_id, message.model_dump_json()))
            self._wakeup[silo].set()
        return [message.task_id for _, message in tasks]

    def waiter(self, task_id: str) -> asyncio.Future[TaskResult]:
        return self._waiters[task_id]

    def withdraw(self, task_ids: Iterable[str]) -> None:
        """Close tasks nobody will wait for any more (failed job, timed-out check)."""
        for task_id in task_ids:
            silo = self._open.pop(task_id, None)
            self._handed.pop(task_id, None)
            self._waiters.pop(task_id, None)
            self._task_jobs.pop(task_id, None)
            assigned_at = self._assigned_at.pop(task_id, None)
            if silo is not None:
                queue = self._queues[silo]
                for item in list(queue):
                    if item[0] == task_id:
                        queue.remove(item)
                self.store.finish_task(
                    task_id,
                    ok=False,
                    result_json=TaskResult.failed("withdrawn").model_dump_json(),
                    assigned_at=assigned_at,
                )

    async def next_task(
        self, silo: str, wait: float, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> str | None:
        """The silo's next task (as JSON), waiting up to ``wait`` seconds for one.

        ``gone`` says whether the agent that asked has hung up: a task is never handed to a
        dead connection, and a waiting poll does not count as a sign of life (heartbeats
        do), so a silo whose agent died is seen offline while its last poll still waits.
        """
        deadline = time.monotonic() + wait
        event = self._wakeup[silo]
        queue = self._queues[silo]
        self.seen(silo)
        while True:
            event.clear()
            if gone is not None and await gone():
                return None
            if silo not in self._queues or silo not in self._last_seen:  # shut out meanwhile
                return None
            if queue:
                task_id, message_json = queue.popleft()
                # Kept in memory and written with the result: one commit per task, not two.
                self._assigned_at[task_id] = time.time()
                if task_id in self._open:
                    self._handed[task_id] = (silo, message_json)
                return message_json
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, HEARTBEAT_SECONDS * 2))

    def holds(self, silo: str, task_id: str) -> bool:
        """Whether task ``task_id`` is ``silo``'s and still waits for its result."""
        return self._open.get(task_id) == silo

    def deliver(self, silo: str, task_id: str, result: TaskResult) -> bool:
        """Record a task's result; False when the task is unknown, not the silo's, or closed."""
        if self._open.get(task_id) != silo:
            return False
        del self._open[task_id]
        self._handed.pop(task_id, None)
        self._task_jobs.pop(task_id, None)
        self.store.finish_task(
            task_id,
            ok=result.ok,
            result_json=result.model_dump_json(exclude=_INLINE),
            assigned_at=self._assigned_at.pop(task_id, None),
        )
        waiter = self._waiters.pop(task_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
        return True

    def progress(self, silo: str, task_id: str, detail: str) -> bool:
        """An agent's word on an open task (such as waiting for approval); False if closed."""
        if self._open.get(task_id) != silo:
            return False
        job_id = self._task_jobs.get(task_id)
        if job_id is not None:
            self._on_progress(job_id, detail)
        return True
