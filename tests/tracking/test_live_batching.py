"""``LiveTracking`` logs a running job's rounds at most once per interval, together."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fedsilo.tracking._live import LiveTracking

Entries = Sequence[tuple[int, Mapping[str, Mapping[str, float]], Mapping[str, float]]]


class _Recorder:
    """Stands in for the MLflow tracker: keeps what each call logged, in order."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.finished: list[str] = []
        self.logged = threading.Event()

    def start_job(self, job_id: str, *_: Any, **__: Any) -> str:
        return f"run-{job_id}"

    def log_rounds(self, run: str, rounds: Entries) -> None:
        self.batches.append([n for n, _, _ in rounds])
        self.logged.set()

    def log_model(self, run: str, path: Any) -> None:
        raise AssertionError("no model in these jobs")

    def finish(self, run: str, state: str) -> None:
        self.finished.append(state)


def _round(n: int) -> list[tuple[int, str, str, dict[str, float]]]:
    return [(n, "silo-a", "train", {"loss": 1.0 / n, "num_samples": 10.0})]


def test_rounds_closing_within_the_interval_are_logged_together() -> None:
    recorder = _Recorder()
    tracking = LiveTracking(recorder, interval=30.0)  # type: ignore[arg-type]
    try:
        tracking.start("job-1", "job", {}, submitter="alice")
        tracking.rounds("job-1", _round(1))
        assert recorder.logged.wait(10), "the first round is logged at once"
        for n in (2, 3, 4):
            tracking.rounds("job-1", _round(n))
        time.sleep(0.3)
        assert recorder.batches == [[1]]  # rounds 2-4 wait for the interval
        assert tracking.flush(timeout=10)
        assert recorder.batches == [[1], [2, 3, 4]]  # then go in one batch
    finally:
        tracking.close()


def test_a_short_interval_shows_each_round_soon_after_it_closes() -> None:
    recorder = _Recorder()
    tracking = LiveTracking(recorder, interval=0.2)  # type: ignore[arg-type]
    try:
        tracking.start("job-1", "job", {}, submitter=None)
        tracking.rounds("job-1", _round(1))
        assert recorder.logged.wait(10)
        tracking.rounds("job-1", _round(2))
        deadline = time.monotonic() + 10
        while sum(map(len, recorder.batches)) < 2:
            assert time.monotonic() < deadline, recorder.batches
            time.sleep(0.05)
        assert recorder.batches == [[1], [2]]  # round 2 logged by the timer, unflushed
    finally:
        tracking.close()


def test_the_end_of_a_job_logs_rounds_held_back_and_cancels_their_timer() -> None:
    recorder = _Recorder()
    tracking = LiveTracking(recorder, interval=30.0)  # type: ignore[arg-type]
    try:
        tracking.start("job-1", "job", {}, submitter=None)
        tracking.rounds("job-1", _round(1))
        assert recorder.logged.wait(10)
        tracking.rounds("job-1", [(2, "silo-a", "custom", {"score": 3.0})])
        tracking.finish("job-1", "job", {}, [], None, "succeeded")
        assert tracking.flush(timeout=10)
        assert recorder.batches == [[1], [2]]
        assert recorder.finished == ["succeeded"]
    finally:
        tracking.close()


def test_an_aggregate_recomputed_at_the_end_in_its_last_bits_is_not_logged_twice() -> None:
    from fedsilo.api import RoundInfo

    recorder = _Recorder()
    tracking = LiveTracking(recorder, interval=0.0)  # type: ignore[arg-type]
    evaluate = {"silo-a": {"accuracy": 0.95, "num_samples": 120.0}}
    evaluate["silo-b"] = {"accuracy": 0.9499999880790709, "num_samples": 120.0}
    try:
        tracking.start("job-1", "job", {}, submitter=None)
        tracking.rounds("job-1", [(1, s, "evaluate", m) for s, m in evaluate.items()])
        assert tracking.flush(timeout=10)
        assert recorder.batches == [[1]]
        live = tracking._jobs["job-1"]
        logged = live.logged[(1, "", "accuracy")]
        # the history the orchestrator reads back sums the silos in another order
        again = logged * (1 + 2**-52)
        assert again != logged
        history = [RoundInfo(round=1, evaluate=evaluate, evaluate_aggregate={"accuracy": again})]
        tracking.finish("job-1", "job", {}, history, None, "succeeded")
        assert tracking.flush(timeout=10)
        assert recorder.batches == [[1]]  # nothing new: round 1 stays one point
        assert recorder.finished == ["succeeded"]
    finally:
        assert tracking.close(timeout=10)


class _SlowRecorder(_Recorder):
    """A store that takes ``seconds`` to log a batch."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.times: list[float] = []

    def log_rounds(self, run: str, rounds: Entries) -> None:
        time.sleep(self.seconds)
        self.times.append(time.monotonic())
        super().log_rounds(run, rounds)


def test_a_slow_logging_spaces_the_next_one_out() -> None:
    recorder = _SlowRecorder(0.05)
    tracking = LiveTracking(recorder, interval=0.01)  # type: ignore[arg-type]
    try:
        tracking.start("job-1", "job", {}, submitter="alice")
        tracking.rounds("job-1", _round(1))
        assert recorder.logged.wait(10)
        first = recorder.times[0]
        for n in (2, 3):
            tracking.rounds("job-1", _round(n))
        time.sleep(0.4)  # far past the interval, within 20 times the logging's 0.05 s
        assert recorder.batches == [[1]]
        deadline = time.monotonic() + 10
        while len(recorder.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert recorder.batches == [[1], [2, 3]]
        assert recorder.times[1] - first >= 0.9  # SHARE x 0.05 s from the first's start
    finally:
        tracking.close()
