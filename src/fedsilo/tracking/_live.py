"""Tracking FL jobs while they run: the parent run from the start, each round as it closes.

The orchestrator hands :class:`LiveTracking` what happens (a job starts, a round closes
with the metrics gathered during it, the job ends with its history and model) and goes
on at once: every MLflow call runs on one thread of its own, in the order the events
came, never on the event loop. A failure of the tracking store is logged and never
reaches the job.

Rounds that close within ``interval`` seconds of a job's last logging are logged
together, one MLflow batch per silo for all of them: a job of second-long rounds shows
each round as it closes, and a job of very short rounds (tenths of a second, where one
batch per silo and round would cost the federation more CPU than the rounds themselves)
shows them at most ``interval`` late. A logging that took long (many silos, a loaded
store) spaces the next one out further, to ``SHARE`` times its own length, so tracking
keeps to a small share of a busy machine.

A round's metrics arrive as the orchestrator records them: ``(round, silo, phase,
metrics)`` with phase ``train``, ``evaluate`` or ``privacy``, and silo ``*`` for what
belongs to the whole federation (``central_epsilon``). The evaluation of round n's global
model reaches the orchestrator with round n+1's training, so a round's ``accuracy``
appears one round after its ``train_loss``; the final evaluation comes with the end of
the job. At the end, whatever the history holds that was not logged yet (or was logged
with another value) is logged, so the run is complete even if a round's logging failed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsilo.tracking._history import round_entries, track_history
from fedsilo.tracking._tracker import JobRun, Tracker

if TYPE_CHECKING:
    from fedsilo.api import RoundInfo

__all__ = ["FEDERATION", "LIVE_INTERVAL", "LiveTracking", "RoundRecord"]

log = logging.getLogger("fedsilo.tracking")

FEDERATION = "*"
"""The silo name under which the orchestrator records federation-wide metrics."""

RoundRecord = tuple[int, str, str, Mapping[str, float]]
"""``(round, silo, phase, metrics)``, as the orchestrator records them when a round closes."""

LIVE_INTERVAL = 1.0
"""Seconds between two loggings of a running job's rounds, at most one per interval."""

SHARE = 20
"""A running job's logging waits at least this many times as long as the last one took:
on a busy machine, live tracking takes at most about 1/SHARE of the time."""

_Entry = tuple[int, dict[str, dict[str, float]], dict[str, float]]  # round, per silo, aggregate

_Key = tuple[int, str, str]  # (round, silo or "aggregate", metric)


@dataclass
class _Live:
    """What the tracking thread knows of one running job (touched only on that thread)."""

    job_id: str
    job_name: str
    params: Mapping[str, Any]
    submitter: str | None = None
    readers: tuple[str, ...] = ()
    run: JobRun | None = None
    phases: dict[int, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    logged: dict[_Key, float] = field(default_factory=dict)
    failures: int = 0


class LiveTracking:
    """Logs running jobs to one MLflow store from a single background thread, in order.

    Every public method only queues work and returns; none raises because of the store.
    """

    def __init__(self, tracker: Tracker, *, interval: float = LIVE_INTERVAL) -> None:
        self.tracker = tracker
        self.interval = interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracking")
        self._jobs: dict[str, _Live] = {}  # read and written on the tracking thread only
        self._closed = threading.Event()
        # Rounds waiting to be logged, per job; guarded by _lock (the event loop adds, the
        # tracking thread drains).
        self._lock = threading.Lock()
        self._pending: dict[str, list[RoundRecord]] = {}
        self._timers: dict[str, threading.Timer] = {}
        # when each job's next logging may start: ``interval`` after the last one began,
        # or longer when that logging itself took long (see ``SHARE``)
        self._next: dict[str, float] = {}

    def _submit(self, job_id: str, what: str, work: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                work()
            except Exception as exc:
                live = self._jobs.get(job_id)
                first = live is None or live.failures == 0
                if live is not None:
                    live.failures += 1
                if first:
                    log.warning("could not track job %s in MLflow (%s)", job_id, what, exc_info=exc)
                else:
                    log.warning("could not track job %s in MLflow (%s): %s", job_id, what, exc)

        if self._closed.is_set():
            return
        try:
            self._executor.submit(guarded)
        except RuntimeError:  # closed meanwhile (the orchestrator is stopping)
            log.warning("could not track job %s in MLflow (%s): tracking has stopped", job_id, what)

    def open(self) -> None:
        """Open the store now, on the tracking thread, before any job needs it.

        The first opening of a store imports MLflow and creates its tables (seconds of
        CPU); done as the orchestrator starts, it is not paid while a first job's rounds run.
        A store that cannot be opened is logged here and tried again by the first job.
        """

        def work() -> None:
            try:
                _ = self.tracker.client
            except Exception as exc:
                log.warning("could not open the MLflow store (the first job tries again): %s", exc)

        if not self._closed.is_set():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self._executor.submit(work)

    def start(
        self,
        job_id: str,
        job_name: str,
        params: Mapping[str, Any],
        *,
        submitter: str | None,
        readers: Sequence[str] = (),
    ) -> None:
        """Open the job's parent run now, so the store shows the job while it runs.

        The run is ``submitter``'s, shared with ``readers`` (see :meth:`Tracker.start_job`).
        """
        live = _Live(job_id, job_name, params, submitter, tuple(readers))

        def work() -> None:
            self._jobs[job_id] = live
            live.run = self._start(live)

        self._submit(job_id, "start", work)

    def rounds(self, job_id: str, records: Iterable[RoundRecord]) -> None:
        """Log the metrics a round closed with: per silo, aggregated, privacy spent.

        Logged at once, or with the next rounds when the job was logged less than
        ``interval`` seconds ago.
        """
        copied = [(n, silo, phase, dict(metrics)) for n, silo, phase, metrics in records]
        if not copied:
            return
        with self._lock:
            waiting = job_id in self._pending
            self._pending.setdefault(job_id, []).extend(copied)
            if waiting:
                return  # a logging of this job is already due; it takes these too
            delay = self._next.get(job_id, -math.inf) - time.monotonic()
            if delay > 0:
                timer = threading.Timer(delay, self._due, args=(job_id,))
                timer.daemon = True
                self._timers[job_id] = timer
                timer.start()
                return
        self._due(job_id)

    def _due(self, job_id: str) -> None:
        with self._lock:
            self._timers.pop(job_id, None)
        self._submit(job_id, "round", functools.partial(self._log_pending, job_id))

    def _log_pending(self, job_id: str) -> None:
        """On the tracking thread: log every round of ``job_id`` waiting, in one go."""
        began = time.monotonic()
        with self._lock:
            copied = self._pending.pop(job_id, [])
            self._next[job_id] = began + self.interval
        live = self._jobs.get(job_id)
        if not copied or live is None:
            return  # not started here: the end of the job logs the whole history
        try:
            if live.run is None:
                live.run = self._start(live)
            touched = sorted({n for n, *_ in copied})
            for n, silo, phase, metrics in copied:
                live.phases.setdefault(n, {}).setdefault(phase, {}).setdefault(silo, {}).update(
                    metrics
                )
            self._log(live, [(_round_info(n, live.phases[n]), live.phases[n]) for n in touched])
        finally:
            # a logging that took long (many silos, a busy store) spaces the next one out,
            # so that tracking never takes more than 1/SHARE of the federation's time
            took = time.monotonic() - began
            with self._lock:
                self._next[job_id] = began + max(self.interval, SHARE * took)

    def finish(
        self,
        job_id: str,
        job_name: str,
        params: Mapping[str, Any],
        history: Sequence[RoundInfo],
        model: Path | None,
        state: str,
    ) -> None:
        """Complete the job's run from its whole history, store the model, set its state."""
        history = list(history)

        def work() -> None:
            with self._lock:
                timer = self._timers.pop(job_id, None)
            if timer is not None:
                timer.cancel()
            self._log_pending(job_id)  # rounds held back for the interval, first
            with self._lock:
                self._next.pop(job_id, None)
            live = self._jobs.pop(job_id, None)
            if live is None or live.run is None:
                track_history(
                    self.tracker,
                    job_id,
                    job_name,
                    params,
                    history,
                    model,
                    state=state,
                    submitter=None if live is None else live.submitter,
                    readers=() if live is None else live.readers,
                )
                return
            self._log(live, [(info, None) for info in history])
            if model is not None:
                self.tracker.log_model(live.run, model)
            self.tracker.finish(live.run, state)

        self._submit(job_id, "finish", work)

    def _start(self, live: _Live) -> JobRun:
        return self.tracker.start_job(
            live.job_id, live.job_name, live.params, submitter=live.submitter, readers=live.readers
        )

    def _log(
        self,
        live: _Live,
        rounds: Sequence[tuple[RoundInfo, Mapping[str, Mapping[str, Mapping[str, float]]] | None]],
    ) -> None:
        """Log what of these rounds was not logged yet with the same value, in one batch."""
        assert live.run is not None
        entries: list[_Entry] = []
        for info, extra in rounds:
            per_silo, aggregate = round_entries(info)
            for phase, silos in (extra or {}).items():
                if phase in ("train", "evaluate", "privacy"):
                    continue
                for silo, metrics in silos.items():
                    target = aggregate if silo == FEDERATION else per_silo.setdefault(silo, {})
                    target.update({f"{phase}_{k}": v for k, v in metrics.items()})
            new_silos = {
                silo: {
                    k: v
                    for k, v in metrics.items()
                    if not _same(live.logged.get((info.round, silo, k)), v)
                }
                for silo, metrics in per_silo.items()
            }
            new_silos = {silo: metrics for silo, metrics in new_silos.items() if metrics}
            new_aggregate = {
                k: v
                for k, v in aggregate.items()
                if not _same(live.logged.get((info.round, "", k)), v)
            }
            if new_silos or new_aggregate:
                entries.append((info.round, new_silos, new_aggregate))
        if not entries:
            return
        self.tracker.log_rounds(live.run, entries)
        for round_, new_silos, new_aggregate in entries:
            for silo, metrics in new_silos.items():
                live.logged.update({(round_, silo, k): v for k, v in metrics.items()})
            live.logged.update({(round_, "", k): v for k, v in new_aggregate.items()})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is logged (rounds held for the interval
        too); False if ``timeout`` ran out."""
        if self._closed.is_set():
            return True
        with self._lock:
            held = list(self._timers.items())
            self._timers.clear()
        for job_id, timer in held:
            timer.cancel()
            self._submit(job_id, "round", functools.partial(self._log_pending, job_id))
        done: Future[None] = self._executor.submit(lambda: None)
        try:
            done.result(timeout=timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Log what is queued, then stop the thread; later events are dropped.

        The orchestrator calls this as it stops, so a job that ended is in the store before
        the process exits. Waits at most ``timeout`` seconds for the store (None: as long
        as it takes); False if what was queued could not all be logged in that time.
        """
        done = self.flush(timeout)
        self._closed.set()
        self._executor.shutdown(wait=done, cancel_futures=not done)
        return done


def _same(logged: float | None, value: float) -> bool:
    """Whether ``value`` is what was logged already. An aggregate computed again at the end
    (from the stored history, its silos summed in another order) may differ in its last
    bits: that is the same value, and logging it twice would put two points on one round."""
    if logged is None:
        return False
    if math.isnan(logged) or math.isnan(value):
        return math.isnan(logged) and math.isnan(value)
    return math.isclose(logged, value, rel_tol=1e-9, abs_tol=1e-12)


def _round_info(round_: int, phases: Mapping[str, Mapping[str, Mapping[str, float]]]) -> RoundInfo:
    """The round as the orchestrator's history will show it, from the records so far."""
    from fedsilo.api import RoundInfo
    from fedsilo.strategies import weighted_metrics

    evaluate = {s: dict(m) for s, m in phases.get("evaluate", {}).items()}
    privacy: dict[str, float] = {}
    for metrics in phases.get("privacy", {}).values():
        privacy.update(metrics)
    return RoundInfo(
        round=round_,
        train={s: dict(m) for s, m in phases.get("train", {}).items()},
        evaluate=evaluate,
        evaluate_aggregate=weighted_metrics(evaluate) if evaluate else {},
        privacy=privacy,
    )
