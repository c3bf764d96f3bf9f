"""The round engine on its own: phases, folding order, quorum, secure aggregation, state.

Silos here are a few lines of numpy: each "trains" by adding its own offset to the global
model, so every expected model is a weighted mean that can be written down.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from fedsilo.api._messages import TaskKind
from fedsilo.errors import JobFailed
from fedsilo.jobs import JobSpec
from fedsilo.orchestrator._resume import restore_strategy, strategy_state
from fedsilo.privacy import strategy_for
from fedsilo.privacy.secagg import SecAggClient, mask_update
from fedsilo.rounds import (
    CENTRAL,
    Answer,
    Finished,
    Missed,
    Phase,
    QuorumLost,
    RoundClosed,
    RoundEngine,
    SetupDone,
)

SILOS = ("a", "b", "c")
OFFSET = {"a": 1.0, "b": 2.0, "c": 4.0}
SAMPLES = {"a": 10, "b": 30, "c": 60}
INITIAL = {"w": np.zeros(4, dtype=np.float32)}


def _spec(**changes: Any) -> JobSpec:
    base: dict[str, Any] = {"name": "demo", "code": ".", "silos": list(SILOS), "rounds": 3}
    return JobSpec.model_validate({**base, **changes})


def _engine(spec: JobSpec) -> RoundEngine:
    engine = RoundEngine(spec, strategy_for(spec.strategy, spec.privacy), job_id="job-1")
    engine.start(dict(INITIAL))
    return engine


def _fit(silo: str, current: dict[str, Any], round_: int) -> Answer:
    params = {"w": (current["w"] + OFFSET[silo] * round_).astype(np.float32)}
    metrics = {"loss": 1.0 / round_, "num_samples": float(SAMPLES[silo])}
    return Answer(silo, metrics, {"accuracy": 0.5}, update=params, num_samples=SAMPLES[silo])


def _drive(
    engine: RoundEngine,
    *,
    missing: dict[int, set[str]] | None = None,
    shuffle: random.Random | None = None,
) -> tuple[list[RoundClosed], Finished]:
    """Answer every task as a silo in this process would; ``missing[round]`` never answer."""
    closed: list[RoundClosed] = []
    while True:
        step = engine.next()
        if isinstance(step, Finished):
            return closed, step
        if isinstance(step, RoundClosed):
            closed.append(step)
            continue
        if isinstance(step, SetupDone):
            continue
        tasks = list(step.tasks)
        if shuffle is not None:
            shuffle.shuffle(tasks)
        for task in tasks:
            assert engine.current is not None
            if task.silo in (missing or {}).get(step.round, set()):
                engine.feed(Missed(task.silo, "no answer within 5 s"))
            elif task.kind is TaskKind.FIT:
                engine.feed(_fit(task.silo, engine.current, task.round))
            else:
                engine.feed(Answer(task.silo, eval_metrics={"accuracy": 0.9}))


def _weighted(current: np.ndarray, round_: int, silos: tuple[str, ...]) -> np.ndarray:
    total = sum(SAMPLES[s] for s in silos)
    return current + sum(OFFSET[s] * round_ * SAMPLES[s] for s in silos) / total


def test_rounds_fold_every_silo_and_record_metrics() -> None:
    engine = _engine(_spec())
    first = engine.next()
    assert isinstance(first, Phase)
    assert first.kind is TaskKind.FIT and first.round == 1
    assert [t.silo for t in first.tasks] == list(SILOS)
    assert not any(t.evaluate_first for t in first.tasks)
    for task in first.tasks:
        engine.feed(_fit(task.silo, INITIAL, 1))
    closed = engine.next()
    assert isinstance(closed, RoundClosed) and closed.round == 1
    np.testing.assert_allclose(closed.parameters["w"], _weighted(INITIAL["w"], 1, SILOS))
    assert {(r, s, k) for r, s, k, _ in closed.metrics} == {(1, s, "train") for s in SILOS} | {
        (0, s, "evaluate") for s in SILOS
    }
    second = engine.next()
    assert isinstance(second, Phase) and all(t.evaluate_first for t in second.tasks)


def test_the_model_does_not_depend_on_the_order_answers_arrive() -> None:
    a = _drive(_engine(_spec()))[0][-1].parameters["w"]
    for seed in range(5):
        b = _drive(_engine(_spec()), shuffle=random.Random(seed))[0][-1].parameters["w"]
        assert a.tobytes() == b.tobytes()


def test_the_final_evaluation_ends_the_job() -> None:
    closed, finished = _drive(_engine(_spec()))
    assert [c.round for c in closed] == [1, 2, 3]
    assert {(r, k) for r, _, k, _ in finished.metrics} == {(3, "evaluate")}
    engine = _engine(_spec())
    _drive(engine)
    with pytest.raises(RuntimeError, match="over"):
        engine.next()


def test_a_silo_that_misses_a_round_is_named_and_the_mean_renormalised() -> None:
    engine = _engine(_spec(min_silos=2, round_timeout=5))
    closed, _ = _drive(engine, missing={2: {"b"}})
    second = closed[1]
    assert second.missed == {"b": "no answer within 5 s"}
    expected = _weighted(closed[0].parameters["w"], 2, ("a", "c"))
    np.testing.assert_allclose(second.parameters["w"], expected, rtol=1e-6)
    assert closed[2].missed == {}  # b is back in round 3


def test_below_quorum_the_job_fails_naming_the_missing_silos() -> None:
    engine = _engine(_spec(min_silos=2, round_timeout=5))
    phase = engine.next()
    assert isinstance(phase, Phase) and phase.tolerate
    engine.feed(Missed("a", "disconnected"))
    with pytest.raises(QuorumLost, match=r"1 of 3 silos answered.*'a' \(disconnected\).*'c'"):
        engine.feed(Missed("c", "no answer"))


def test_without_min_silos_a_round_waits_for_every_silo() -> None:
    engine = _engine(_spec())
    phase = engine.next()
    assert isinstance(phase, Phase) and not phase.tolerate
    engine.feed(_fit("a", INITIAL, 1))
    with pytest.raises(RuntimeError, match="have not answered"):
        engine.next()
    with pytest.raises(RuntimeError, match="no task of silo 'a'"):
        engine.feed(_fit("a", INITIAL, 1))


def test_central_dp_adds_the_round_epsilon() -> None:
    spec = _spec(privacy={"central": {"noise_multiplier": 1.0, "clip_norm": 10.0}})
    closed, _ = _drive(_engine(spec))
    epsilons = [c.privacy["central_epsilon"] for c in closed]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    assert (1, CENTRAL, "privacy", closed[0].privacy) in closed[0].metrics


def test_a_resumed_engine_ends_with_the_model_of_an_uninterrupted_one() -> None:
    spec = _spec(strategy={"name": "fedadam", "server_lr": 0.1})
    whole, _ = _drive(_engine(spec))
    first = _engine(spec)
    step = first.next()
    while not isinstance(step, RoundClosed):
        assert isinstance(step, Phase)
        for task in step.tasks:
            assert first.current is not None
            first.feed(_fit(task.silo, first.current, task.round))
        step = first.next()
    arrays, meta = strategy_state(first.strategy)
    strategy = strategy_for(spec.strategy, spec.privacy)
    restore_strategy(strategy, arrays, json.dumps(meta))
    second = RoundEngine(spec, strategy, job_id="job-1")
    second.resume(step.parameters, step.round, first.state())
    rest, _ = _drive(second)
    assert [c.round for c in rest] == [2, 3]
    assert rest[-1].parameters["w"].tobytes() == whole[-1].parameters["w"].tobytes()


# -- secure aggregation ---------------------------------------------------------------------


def _secure_drive(
    engine: RoundEngine, *, silent: dict[int, set[str]] | None = None
) -> tuple[list[RoundClosed], Finished, list[Any]]:
    """Run a secure job with every silo's party in this process."""
    spec = engine.spec
    secure = spec.privacy.secure_aggregation
    assert secure is not None
    parties = {
        s: SecAggClient(
            s,
            job_id="job-1",
            rounds=spec.rounds,
            threshold=secure.threshold,
            bits=secure.fixed_point_bits,
            clip_range=secure.clip_range,
        )
        for s in SILOS
    }
    closed: list[RoundClosed] = []
    left: list[Any] = []
    while True:
        step = engine.next()
        if isinstance(step, Finished):
            return closed, step, left
        if isinstance(step, RoundClosed):
            closed.append(step)
            continue
        if isinstance(step, SetupDone):
            assert step.threshold == 2
            continue
        for task in step.tasks:
            party, current = parties[task.silo], engine.current
            assert current is not None
            if task.silo in (silent or {}).get(step.round, set()) and step.kind is TaskKind.FIT:
                left += engine.feed(Missed(task.silo, "no answer within 30 s"))
            elif task.kind is TaskKind.SECAGG:
                replies = [party.advertise()] if task.secagg is None else party.feed(task.secagg)
                left += engine.feed(Answer(task.silo, secagg=replies))
            elif task.kind is TaskKind.FIT:
                plain = _fit(task.silo, current, task.round)
                assert isinstance(plain.update, dict)
                weight = task.mask_weight
                masked = mask_update(
                    party,
                    task.round,
                    plain.update,
                    current,
                    weight=float(plain.num_samples) if weight is None else weight,
                    plan=task.mask_plan,
                )
                left += engine.feed(
                    Answer(
                        task.silo,
                        plain.train_metrics,
                        num_samples=plain.num_samples,
                        secagg=[masked],
                    )
                )
            else:
                left += engine.feed(Answer(task.silo, eval_metrics={"accuracy": 0.9}))


def test_secure_rounds_give_the_plain_mean() -> None:
    spec = _spec(privacy={"secure_aggregation": {"fixed_point_bits": 24}})
    plain, _ = _drive(_engine(_spec()))
    secure, finished, left = _secure_drive(_engine(spec))
    assert not left and finished.missed == {}
    for p, s in zip(plain, secure, strict=True):
        np.testing.assert_allclose(s.parameters["w"], p.parameters["w"], atol=1e-5)
        assert s.privacy == {"secure_aggregation_silos": 3.0, "secure_aggregation_dropped": 0.0}


def test_a_silo_dropped_under_secure_aggregation_gets_no_more_tasks() -> None:
    spec = _spec(privacy={"secure_aggregation": {"fixed_point_bits": 24}})
    closed, finished, left = _secure_drive(_engine(spec), silent={2: {"c"}})
    assert [(x.silo, x.for_good) for x in left] == [("c", True)]
    assert closed[1].missed == {"c": "no answer within 30 s"}
    assert closed[1].privacy["secure_aggregation_dropped"] == 1.0
    expected = _weighted(closed[0].parameters["w"], 2, ("a", "b"))
    np.testing.assert_allclose(closed[1].parameters["w"], expected, atol=1e-5)
    assert closed[2].privacy["secure_aggregation_silos"] == 2.0
    assert {s for _, s, k, _ in finished.metrics if k == "evaluate"} == {"a", "b"}


def test_a_secure_job_resumes_with_a_new_setup_of_the_silos_left() -> None:
    spec = _spec(rounds=4, privacy={"secure_aggregation": {"fixed_point_bits": 24}})
    whole, _, _ = _secure_drive(_engine(spec))
    first = _engine(spec)
    closed, _, _ = _secure_drive(first, silent={2: {"c"}})
    state = first.state()
    assert state.active == ["a", "b"] and set(state.dropped) == {"c"}
    saved = type(state).from_dict(state.as_dict())

    def resumed() -> RoundEngine:
        engine = RoundEngine(spec, strategy_for(spec.strategy, spec.privacy), job_id="job-1")
        engine.resume(closed[1].parameters, 2, saved)
        return engine

    keys = resumed().next()
    assert isinstance(keys, Phase) and keys.kind is TaskKind.SECAGG
    assert [t.silo for t in keys.tasks] == ["a", "b"] and keys.tasks[0].secagg is None
    rest, _, _ = _secure_drive(resumed())
    assert [c.round for c in rest] == [3, 4]
    assert rest[0].privacy["secure_aggregation_silos"] == 2.0
    # without a crash, the same silos left give the same model
    np.testing.assert_array_equal(rest[-1].parameters["w"], closed[-1].parameters["w"])
    assert whole[-1].round == 4


def test_a_secure_job_with_fewer_silos_left_than_its_threshold_does_not_resume() -> None:
    spec = _spec(privacy={"secure_aggregation": {"fixed_point_bits": 24}})
    engine = RoundEngine(spec, strategy_for(spec.strategy, spec.privacy), job_id="job-1")
    state = engine.state()
    state.active, state.dropped = ["a"], {"b": "gone", "c": "gone"}
    with pytest.raises(JobFailed, match="fewer than its threshold of 2"):
        engine.resume(dict(INITIAL), 1, state)
