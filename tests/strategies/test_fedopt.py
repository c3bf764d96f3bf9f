"""Server optimizers: two rounds of each, recomputed by hand from the paper's update rules."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.errors import AggregationError
from fedsilo.strategies import FedOpt, ServerOptimizer

F64 = npt.NDArray[np.float64]

# Two rounds, three silos with 1, 2 and 1 samples; each round's silo parameters are fixed
# here (they would come from local training started at the new global model).
START = np.array([0.5, -1.0, 2.0])
SAMPLES = {"a": 1, "b": 2, "c": 1}
ROUNDS = [
    {
        "a": np.array([1.0, -1.0, 2.5]),
        "b": np.array([0.0, -0.5, 2.0]),
        "c": np.array([1.0, 0.0, 1.0]),
    },
    {
        "a": np.array([0.3, 0.2, 1.0]),
        "b": np.array([0.6, -0.6, 1.9]),
        "c": np.array([-0.2, 0.1, 1.5]),
    },
]


def _mean(params: dict[str, F64]) -> F64:
    total = sum(SAMPLES.values())
    return sum(SAMPLES[s] * p for s, p in params.items()) / total  # type: ignore[return-value]


def _by_hand(
    optimizer: ServerOptimizer, lr: float, mom: float, b1: float, b2: float, tau: float
) -> list[F64]:
    """The global model after each round, straight from Reddi et al. 2021 (Algorithm 2)."""
    x, m, v = START.copy(), np.zeros(3), np.full(3, tau**2)
    out = []
    for params in ROUNDS:
        delta = _mean(params) - x
        if optimizer is ServerOptimizer.AVGM:
            m = mom * m + delta
            x = x + lr * m
        else:
            m = b1 * m + (1 - b1) * delta
            if optimizer is ServerOptimizer.ADAGRAD:
                v = v + delta**2
            elif optimizer is ServerOptimizer.ADAM:
                v = b2 * v + (1 - b2) * delta**2
            else:
                v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
            x = x + lr * m / (np.sqrt(v) + tau)
        out.append(x)
    return out


def _run(strategy: FedOpt, dtype: type[np.floating] = np.float64) -> list[npt.NDArray[np.generic]]:
    current: dict[str, npt.NDArray[np.generic]] = {"w": START.astype(dtype)}
    history = []
    for round_, params in enumerate(ROUNDS, start=1):
        aggregation = strategy.begin_aggregation(round_, current)
        for silo, value in params.items():
            aggregation.add(silo, {"w": value.astype(dtype)}, SAMPLES[silo])
        current = aggregation.finish()
        history.append(current["w"])
    return history


@pytest.mark.parametrize("optimizer", list(ServerOptimizer))
def test_two_rounds_match_the_update_rule(optimizer: ServerOptimizer) -> None:
    strategy = FedOpt(
        optimizer=optimizer, server_lr=0.1, server_momentum=0.5, beta1=0.8, beta2=0.9, tau=0.01
    )
    expected = _by_hand(optimizer, lr=0.1, mom=0.5, b1=0.8, b2=0.9, tau=0.01)
    for got, want in zip(_run(strategy), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("optimizer", list(ServerOptimizer))
def test_float32_models_stay_float32_and_close_to_the_float64_rule(
    optimizer: ServerOptimizer,
) -> None:
    strategy = FedOpt(optimizer=optimizer)
    lr = 1.0 if optimizer is ServerOptimizer.AVGM else 0.01
    expected = _by_hand(optimizer, lr=lr, mom=0.9, b1=0.9, b2=0.99, tau=1e-3)
    for got, want in zip(_run(strategy, np.float32), expected, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fedavgm_momentum_carries_the_previous_step() -> None:
    # momentum 0.9, lr 1: round 1 moves to the mean; round 2 overshoots by 0.9 x round 1's step
    history = _run(FedOpt(optimizer=ServerOptimizer.AVGM, server_momentum=0.9))
    first_mean, second_mean = _mean(ROUNDS[0]), _mean(ROUNDS[1])
    np.testing.assert_allclose(history[0], first_mean, rtol=1e-12)
    step1 = first_mean - START
    np.testing.assert_allclose(history[1], second_mean + 0.9 * step1, rtol=1e-12)


def test_fedavgm_without_momentum_is_fedavg() -> None:
    history = _run(FedOpt(optimizer=ServerOptimizer.AVGM, server_momentum=0.0))
    for got, params in zip(history, ROUNDS, strict=True):
        np.testing.assert_allclose(got, _mean(params), rtol=1e-12)


def test_needs_the_current_model() -> None:
    with pytest.raises(AggregationError, match="current global parameters"):
        FedOpt(optimizer=ServerOptimizer.ADAM).begin_aggregation(1, None)


def test_neither_current_nor_silo_parameters_are_modified() -> None:
    current = {"w": START.astype(np.float32), "n": np.array([4], dtype=np.int64)}
    sent = {"w": ROUNDS[0]["a"].astype(np.float32), "n": np.array([7], dtype=np.int64)}
    before = {k: v.copy() for k, v in current.items()}, {k: v.copy() for k, v in sent.items()}
    aggregation = FedOpt(optimizer=ServerOptimizer.YOGI).begin_aggregation(1, current)
    aggregation.add("a", sent, 3)
    out = aggregation.finish()
    for kept, original in zip((current, sent), before, strict=True):
        for name, value in kept.items():
            np.testing.assert_array_equal(value, original[name])
    assert not np.shares_memory(out["w"], current["w"])
    # integer tensors (counters) take the weighted mean, not an optimizer step
    assert out["n"].dtype == np.int64 and int(out["n"][0]) == 7


def test_silo_tensors_must_match_the_current_model() -> None:
    aggregation = FedOpt(optimizer=ServerOptimizer.ADAM).begin_aggregation(1, {"w": START})
    with pytest.raises(AggregationError, match=r"'a'.*'w'.*shape"):
        aggregation.add("a", {"w": np.zeros(4)}, 1)
    with pytest.raises(AggregationError, match=r"'a'.*extra"):
        aggregation.add("a", {"w": START, "extra": np.zeros(1)}, 1)


def test_a_failed_round_leaves_the_optimizer_state_alone() -> None:
    strategy = FedOpt(optimizer=ServerOptimizer.ADAM, server_lr=0.1, beta1=0.8, beta2=0.9, tau=0.01)
    aggregation = strategy.begin_aggregation(1, {"w": START})
    aggregation.add("a", {"w": ROUNDS[0]["a"]}, 1)
    with pytest.raises(AggregationError, match="missing: b"):
        aggregation.finish(failures=("b",))
    expected = _by_hand(ServerOptimizer.ADAM, lr=0.1, mom=0.0, b1=0.8, b2=0.9, tau=0.01)
    np.testing.assert_allclose(_run(strategy)[1], expected[1], rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server_lr": 0.0}, "server_lr"),
        ({"tau": -1.0}, "tau"),
        ({"beta2": 1.0}, "beta2"),
        ({"server_momentum": 1.0}, "server_momentum"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(AggregationError, match=message):
        FedOpt(optimizer=ServerOptimizer.ADAM, **kwargs)
