"""Robust aggregators: median, trimmed mean, Krum and Multi-Krum on arrays small enough to
check by hand, and their point: one poisoned silo does not move the result."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.errors import AggregationError
from fedsilo.strategies import FedAvg, Krum, Median, Strategy, TrimmedMean

Arrays = dict[str, npt.NDArray[np.generic]]

# Five silos, one tensor of two coordinates; silo e is an outlier in both.
TABLE = {
    "a": [1.0, 10.0],
    "b": [2.0, 20.0],
    "c": [3.0, 30.0],
    "d": [4.0, 40.0],
    "e": [100.0, -100.0],
}


def _aggregate(
    strategy: Strategy, results: dict[str, Arrays], order: list[str] | None = None
) -> Arrays:
    aggregation = strategy.begin_aggregation(1, None)
    for silo in order or list(results):
        aggregation.add(silo, results[silo], 10)
    return aggregation.finish()


def _table(dtype: type[np.generic] = np.float32) -> dict[str, Arrays]:
    return {silo: {"w": np.array(values, dtype=dtype)} for silo, values in TABLE.items()}


def test_median_is_coordinate_wise() -> None:
    out = _aggregate(Median(), _table())
    # [1, 2, 3, 4, 100] -> 3 and [10, 20, 30, 40, -100] -> 20
    np.testing.assert_array_equal(out["w"], [3.0, 20.0])
    assert out["w"].dtype == np.float32


def test_median_of_an_even_count_is_the_middle_pair_mean() -> None:
    results = _table()
    del results["e"]
    np.testing.assert_array_equal(_aggregate(Median(), results)["w"], [2.5, 25.0])


def test_median_of_integers_is_rounded_and_keeps_the_dtype() -> None:
    results = {"a": {"n": np.array([1, 7])}, "b": {"n": np.array([2, 8])}}
    out = _aggregate(Median(), results)
    assert out["n"].dtype == np.int64
    np.testing.assert_array_equal(out["n"], [2, 8])  # 1.5 and 7.5 round to even


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (0.0, [(1 + 2 + 3 + 4 + 100) / 5, (10 + 20 + 30 + 40 - 100) / 5]),  # plain mean
        (0.1, [(1 + 2 + 3 + 4 + 100) / 5, (10 + 20 + 30 + 40 - 100) / 5]),  # floor(0.5) = 0
        (0.2, [(2 + 3 + 4) / 3, (10 + 20 + 30) / 3]),  # floor(1.0) = 1 from each end
        (0.45, [3.0, 20.0]),  # floor(2.25) = 2: only the middle value is left
    ],
)
def test_trimmed_mean_drops_the_extremes_per_coordinate(
    ratio: float, expected: list[float]
) -> None:
    out = _aggregate(TrimmedMean(trim_ratio=ratio), _table())
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)


def _line(values: dict[str, float]) -> dict[str, Arrays]:
    return {silo: {"x": np.array([v])} for silo, v in values.items()}


LINE = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.5, "e": 100.0}
# With f = 1 each silo's score sums its n - f - 2 = 2 nearest squared distances:
# a: 1 + 4 = 5, b: 1 + 1 = 2, c: 1 + 2.25 = 3.25, d: 2.25 + 6.25 = 8.5, e: 96.5² + 98²


def test_krum_picks_the_update_closest_to_its_neighbours() -> None:
    out = _aggregate(Krum(byzantine=1), _line(LINE))
    np.testing.assert_array_equal(out["x"], [1.0])  # silo b


def test_multi_krum_averages_the_m_best() -> None:
    out = _aggregate(Krum(byzantine=1, select=3), _line(LINE))
    np.testing.assert_allclose(out["x"], [(1.0 + 2.0 + 0.0) / 3], rtol=1e-12)  # b, c, a
    default = _aggregate(Krum(byzantine=1, select=None), _line(LINE))  # m = n - f = 4
    np.testing.assert_allclose(default["x"], [(1.0 + 2.0 + 0.0 + 3.5) / 4], rtol=1e-12)


def test_krum_breaks_ties_by_silo_name_whatever_the_order() -> None:
    values = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0, "e": 100.0}  # b and c both score 2
    for order in (list("abcde"), list("edcba"), list("cbeda")):
        np.testing.assert_array_equal(_aggregate(Krum(), _line(values), order)["x"], [1.0])


def test_krum_needs_enough_silos_for_f() -> None:
    four = _line({"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0})
    with pytest.raises(AggregationError, match=r"byzantine=1 needs at least .*5 silos; got 4"):
        _aggregate(Krum(byzantine=1), four)
    with pytest.raises(AggregationError, match="= 7 silos; got 5"):
        _aggregate(Krum(byzantine=2), _line(LINE))
    with pytest.raises(AggregationError, match="at most n - f = 4"):
        _aggregate(Krum(byzantine=1, select=5), _line(LINE))


def _poisoned(size: int = 50) -> tuple[dict[str, Arrays], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(3)
    honest = {f"h{i}": {"w": rng.normal(1.0, 0.01, size=size).astype(np.float32)} for i in range(6)}
    mean = np.mean([p["w"] for p in honest.values()], axis=0, dtype=np.float64)
    return {**honest, "evil": {"w": np.full(size, 1e6, dtype=np.float32)}}, mean


@pytest.mark.parametrize(
    "strategy",
    [Median(), TrimmedMean(trim_ratio=0.2), Krum(byzantine=1), Krum(byzantine=1, select=None)],
    ids=["median", "trimmed_mean", "krum", "multi_krum"],
)
def test_robust_aggregators_ignore_a_poisoned_silo(strategy: Strategy) -> None:
    results, honest_mean = _poisoned()
    out = _aggregate(strategy, results)
    # within the honest silos' spread (0.01) of their mean; the poison is 1e6
    np.testing.assert_allclose(out["w"], honest_mean, atol=0.03)


def test_fedavg_is_dragged_away_by_the_same_poisoned_silo() -> None:
    results, honest_mean = _poisoned()
    out = _aggregate(FedAvg(), results)
    assert np.all(out["w"] > 1e5 * honest_mean)


ROBUST = [Median(), TrimmedMean(trim_ratio=0.2), Krum(), Krum(select=3)]
IDS = ["median", "trimmed_mean", "krum", "multi_krum"]


@pytest.mark.parametrize("strategy", ROBUST, ids=IDS)
def test_order_of_adding_does_not_matter(strategy: Strategy) -> None:
    rng = np.random.default_rng(11)
    results = {s: {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)} for s in "abcdef"}
    reference = _aggregate(strategy, results)
    for order in itertools.islice(itertools.permutations("abcdef"), 0, 720, 97):
        out = _aggregate(strategy, results, list(order))
        for name in reference:
            np.testing.assert_array_equal(out[name], reference[name])


@pytest.mark.parametrize("strategy", ROBUST, ids=IDS)
def test_inputs_are_neither_modified_nor_kept(strategy: Strategy) -> None:
    results = _table(np.float64)
    before = {silo: params["w"].copy() for silo, params in results.items()}
    aggregation = strategy.begin_aggregation(1, None)
    for silo, params in results.items():
        aggregation.add(silo, params, 1)
    for silo, params in results.items():
        np.testing.assert_array_equal(params["w"], before[silo])
        params["w"][...] = 7.0  # a change after add() must not reach the result
    out = aggregation.finish()
    assert not np.all(out["w"] == 7.0)
    assert not any(np.shares_memory(out["w"], params["w"]) for params in results.values())


@pytest.mark.parametrize("strategy", ROBUST, ids=IDS)
def test_refusals_and_failures(strategy: Strategy) -> None:
    aggregation = strategy.begin_aggregation(1, None)
    aggregation.add("a", {"w": np.zeros(2)}, 1)
    with pytest.raises(AggregationError, match="'a' sent two results"):
        aggregation.add("a", {"w": np.zeros(2)}, 1)
    with pytest.raises(AggregationError, match=r"'b'.*'w'.*shape"):
        aggregation.add("b", {"w": np.zeros(3)}, 1)
    with pytest.raises(AggregationError, match="missing: c"):
        aggregation.finish(failures=["c"])
    with pytest.raises(AggregationError, match="no silo"):
        strategy.begin_aggregation(2, None).finish()


def test_trim_ratio_must_leave_something() -> None:
    with pytest.raises(AggregationError, match="trim_ratio"):
        TrimmedMean(trim_ratio=0.5)
