"""FedAvg: the weighted mean of the silos' parameters, and the metrics averaged alongside it."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.errors import AggregationError
from fedsilo.strategies import (
    FedAvg,
    FedAvgSpec,
    Strategy,
    Weighting,
    build_strategy,
    weighted_metrics,
)

Arrays = dict[str, npt.NDArray[np.generic]]


def _two_silos() -> dict[str, tuple[Arrays, int]]:
    """Two silos' float32 results (parameters, num_samples), small enough to average by hand."""
    return {
        "a": (
            {
                "w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
                "b": np.array([0.5], dtype=np.float32),
            },
            1,
        ),
        "b": (
            {
                "w": np.array([[3.0, 6.0], [-1.0, 0.0]], dtype=np.float32),
                "b": np.array([2.0], dtype=np.float32),
            },
            3,
        ),
    }


def _aggregate(strategy: Strategy, results: dict[str, tuple[Arrays, int]]) -> Arrays:
    aggregation = strategy.begin_aggregation(1, None)
    for silo, (params, num_samples) in results.items():
        aggregation.add(silo, params, num_samples)
    return aggregation.finish()


def test_sample_weighted_mean_float32() -> None:
    out = _aggregate(FedAvg(weighting=Weighting.SAMPLES), _two_silos())
    # w = (1 * [[1, 2], [3, 4]] + 3 * [[3, 6], [-1, 0]]) / 4 = [[10, 20], [0, 4]] / 4
    # b = (1 * 0.5 + 3 * 2) / 4 = 6.5 / 4
    assert set(out) == {"w", "b"}
    np.testing.assert_allclose(out["w"], [[2.5, 5.0], [0.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [1.625], rtol=1e-6)
    assert out["w"].dtype == np.float32
    assert out["b"].dtype == np.float32


def test_samples_is_the_default_weighting() -> None:
    default = _aggregate(FedAvg(), _two_silos())
    explicit = _aggregate(FedAvg(weighting=Weighting.SAMPLES), _two_silos())
    for name in ("w", "b"):
        np.testing.assert_array_equal(default[name], explicit[name])
    np.testing.assert_allclose(default["b"], [1.625], rtol=1e-6)


def test_sample_weighted_mean_float64_three_silos() -> None:
    aggregation = FedAvg().begin_aggregation(3, None)
    aggregation.add("a", {"x": np.array([1.0, -2.0, 0.1]), "s": np.array(1.0)}, 2)
    aggregation.add("b", {"x": np.array([4.0, 0.0, 0.2]), "s": np.array(2.0)}, 3)
    aggregation.add("c", {"x": np.array([0.0, 3.0, 0.3]), "s": np.array(-1.0)}, 5)
    out = aggregation.finish()
    # weights 2, 3, 5 over a total of 10
    np.testing.assert_allclose(
        out["x"], [(2 + 12 + 0) / 10, (-4 + 0 + 15) / 10, (0.2 + 0.6 + 1.5) / 10], rtol=1e-12
    )
    np.testing.assert_allclose(out["s"], (2.0 + 6.0 - 5.0) / 10, rtol=1e-12)
    assert out["x"].dtype == np.float64
    assert out["s"].shape == ()


def test_uniform_weighting_ignores_sample_counts() -> None:
    out = _aggregate(FedAvg(weighting=Weighting.UNIFORM), _two_silos())
    # ([[1, 2], [3, 4]] + [[3, 6], [-1, 0]]) / 2 and (0.5 + 2) / 2
    np.testing.assert_allclose(out["w"], [[2.0, 4.0], [1.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [1.25], rtol=1e-6)


def test_explicit_weights_replace_sample_counts() -> None:
    strategy = FedAvg(weighting=Weighting.EXPLICIT, weights={"a": 3.0, "b": 1.0})
    results = _two_silos()
    results["a"] = (results["a"][0], 1_000_000)  # sample counts play no part
    out = _aggregate(strategy, results)
    # (3 * [[1, 2], [3, 4]] + [[3, 6], [-1, 0]]) / 4 and (3 * 0.5 + 2) / 4
    np.testing.assert_allclose(out["w"], [[1.5, 3.0], [2.0, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [0.875], rtol=1e-6)


def test_explicit_weighting_needs_weights() -> None:
    with pytest.raises(AggregationError, match="explicit"):
        FedAvg(weighting=Weighting.EXPLICIT)


def test_explicit_weighting_refuses_a_silo_without_a_weight() -> None:
    aggregation = FedAvg(weighting=Weighting.EXPLICIT, weights={"a": 1.0}).begin_aggregation(
        1, None
    )
    with pytest.raises(AggregationError, match="'stranger'"):
        aggregation.add("stranger", {"w": np.zeros(2, dtype=np.float32)}, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_of_arrival_does_not_change_the_mean(dtype: type[np.floating]) -> None:
    rng = np.random.default_rng(7)
    silos = [f"silo-{i}" for i in range(5)]
    params = {
        silo: {
            "w": rng.normal(size=(4, 3)).astype(dtype),
            "b": rng.normal(size=3).astype(dtype),
        }
        for silo in silos
    }
    samples = {silo: int(n) for silo, n in zip(silos, rng.integers(1, 100, size=5), strict=True)}
    expected = {
        name: np.average(
            np.stack([params[s][name].astype(np.float64) for s in silos]),
            axis=0,
            weights=[samples[s] for s in silos],
        )
        for name in ("w", "b")
    }
    rtol = 1e-6 if dtype is np.float32 else 1e-12
    orders = list(itertools.permutations(silos))
    for order in (orders[0], orders[-1], orders[len(orders) // 2]):
        aggregation = FedAvg().begin_aggregation(1, None)
        for silo in order:
            aggregation.add(silo, params[silo], samples[silo])
        out = aggregation.finish()
        for name in ("w", "b"):
            assert out[name].dtype == dtype
            np.testing.assert_allclose(out[name], expected[name], rtol=rtol, atol=rtol)


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8]
)
def test_dtype_and_shape_are_preserved(dtype: type[np.generic]) -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("a", {"t": np.full((2, 3, 1), 2, dtype=dtype)}, 1)
    aggregation.add("b", {"t": np.full((2, 3, 1), 4, dtype=dtype)}, 1)
    out = aggregation.finish()
    assert out["t"].dtype == np.dtype(dtype)
    assert out["t"].shape == (2, 3, 1)
    np.testing.assert_array_equal(out["t"], np.full((2, 3, 1), 3, dtype=dtype))


def test_integer_tensors_are_rounded_to_nearest() -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("a", {"n": np.array([1, 10, -3], dtype=np.int64), "steps": np.array(7)}, 1)
    aggregation.add("b", {"n": np.array([2, 20, -4], dtype=np.int64), "steps": np.array(9)}, 2)
    out = aggregation.finish()
    # (1 + 4) / 3 = 1.67, (10 + 40) / 3 = 16.67, (-3 - 8) / 3 = -3.67: rounded, not truncated
    np.testing.assert_array_equal(out["n"], [2, 17, -4])
    assert out["n"].dtype == np.int64
    # (7 + 18) / 3 = 8.33 -> 8, a 0-d counter such as BatchNorm's num_batches_tracked
    assert out["steps"].shape == ()
    assert int(out["steps"]) == 8


def test_inputs_are_neither_modified_nor_kept() -> None:
    results = _two_silos()
    before = {silo: {k: v.copy() for k, v in p.items()} for silo, (p, _) in results.items()}
    aggregation = FedAvg().begin_aggregation(1, None)
    for silo, (params, num_samples) in results.items():
        aggregation.add(silo, params, num_samples)
    for silo, (params, _) in results.items():
        for name, value in params.items():
            np.testing.assert_array_equal(value, before[silo][name])
            assert value.dtype == before[silo][name].dtype
    # changing a silo's arrays after add() must not reach the aggregate
    for params, _ in results.values():
        for value in params.values():
            value[...] = 99.0
    out = aggregation.finish()
    np.testing.assert_allclose(out["w"], [[2.5, 5.0], [0.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [1.625], rtol=1e-6)
    # and the aggregate is not a view of any input
    out["w"][...] = -1.0
    for params, _ in results.values():
        assert not np.any(params["w"] == -1.0)


def test_no_results_is_an_error() -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    with pytest.raises(AggregationError, match="no silo"):
        aggregation.finish()


def test_a_silo_reporting_twice_is_refused_and_not_counted() -> None:
    results = _two_silos()
    aggregation = FedAvg().begin_aggregation(1, None)
    for silo, (params, num_samples) in results.items():
        aggregation.add(silo, params, num_samples)
    with pytest.raises(AggregationError, match="'a'"):
        aggregation.add("a", {k: v * 100 for k, v in results["a"][0].items()}, 50)
    out = aggregation.finish()
    np.testing.assert_allclose(out["w"], [[2.5, 5.0], [0.0, 1.0]], rtol=1e-6)


def test_shape_mismatch_names_the_silo_and_tensor() -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("a", {"w": np.zeros((2, 2), dtype=np.float32)}, 1)
    with pytest.raises(AggregationError, match=r"'b'.*'w'.*shape") as excinfo:
        aggregation.add("b", {"w": np.zeros((2, 3), dtype=np.float32)}, 1)
    assert "(2, 3)" in str(excinfo.value)
    assert "(2, 2)" in str(excinfo.value)


@pytest.mark.parametrize(
    ("second", "named"),
    [
        ({"w": np.zeros(2, dtype=np.float32)}, "bias"),  # a tensor missing
        (
            {
                "w": np.zeros(2, dtype=np.float32),
                "bias": np.zeros(1, dtype=np.float32),
                "extra": np.zeros(1, dtype=np.float32),
            },
            "extra",
        ),  # a tensor the others lack
    ],
)
def test_tensor_sets_must_match(second: Arrays, named: str) -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add(
        "a", {"w": np.ones(2, dtype=np.float32), "bias": np.ones(1, dtype=np.float32)}, 1
    )
    with pytest.raises(AggregationError, match=f"'b'.*{named}"):
        aggregation.add("b", second, 1)


def test_zero_sample_counts_everywhere_is_an_error() -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("a", {"w": np.ones(2, dtype=np.float32)}, 0)
    aggregation.add("b", {"w": np.ones(2, dtype=np.float32)}, 0)
    with pytest.raises(AggregationError, match="zero"):
        aggregation.finish()


def test_all_explicit_weights_zero_is_an_error() -> None:
    strategy = FedAvg(weighting=Weighting.EXPLICIT, weights={"a": 0.0, "b": 0.0})
    with pytest.raises(AggregationError, match="zero"):
        _aggregate(strategy, _two_silos())


def test_a_silo_with_zero_weight_does_not_count() -> None:
    strategy = FedAvg(weighting=Weighting.EXPLICIT, weights={"a": 0.0, "b": 2.0})
    out = _aggregate(strategy, _two_silos())
    np.testing.assert_allclose(out["w"], [[3.0, 6.0], [-1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [2.0], rtol=1e-6)


def test_failures_make_the_round_fail() -> None:
    results = _two_silos()
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("a", *results["a"])
    with pytest.raises(AggregationError, match="missing: b, c"):
        aggregation.finish(failures=("c", "b"))


def test_configure_round_sends_every_silo_an_empty_config() -> None:
    assert FedAvg().configure_round(2, ["a", "b"]) == {"a": {}, "b": {}}


def test_build_strategy_from_spec() -> None:
    spec = FedAvgSpec(weighting=Weighting.EXPLICIT, weights={"a": 3.0, "b": 1.0})
    strategy = build_strategy(spec)
    assert isinstance(strategy, FedAvg)
    out = _aggregate(strategy, _two_silos())
    np.testing.assert_allclose(out["w"], [[1.5, 3.0], [2.0, 3.0]], rtol=1e-6)

    uniform = build_strategy(FedAvgSpec(weighting=Weighting.UNIFORM))
    out = _aggregate(uniform, _two_silos())
    np.testing.assert_allclose(out["b"], [1.25], rtol=1e-6)

    default = build_strategy(FedAvgSpec())
    out = _aggregate(default, _two_silos())
    np.testing.assert_allclose(out["b"], [1.625], rtol=1e-6)


def test_weighted_metrics() -> None:
    out = weighted_metrics(
        {
            "a": {"loss": 1.0, "accuracy": 0.5, "num_samples": 10},
            "b": {"loss": 3.0, "accuracy": 0.9, "auc": 0.7, "num_samples": 30},
        }
    )
    assert out["loss"] == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)
    assert out["accuracy"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    # a metric only some silos report is averaged over those silos alone
    assert out["auc"] == pytest.approx(0.7)
    assert out["num_samples"] == 40
    assert set(out) == {"loss", "accuracy", "auc", "num_samples"}


def test_weighted_metrics_without_samples_is_a_plain_mean() -> None:
    out = weighted_metrics({"a": {"loss": 1.0, "num_samples": 0}, "b": {"loss": 2.0}})
    assert out["loss"] == pytest.approx(1.5)
    assert out["num_samples"] == 0


def _peak_traced_bytes(num_silos: int, size: int) -> int:
    """Peak memory traced while ``num_silos`` silos' fresh models are folded in and averaged."""
    tracemalloc.start()
    try:
        aggregation = FedAvg().begin_aggregation(1, None)
        for i in range(num_silos):
            params = {"w": np.full(size, float(i % 7), dtype=np.float32)}
            aggregation.add(f"silo-{i}", params, 1 + i % 3)
            del params
        out = aggregation.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["w"].shape == (size,)
    return peak


def test_aggregation_memory_is_one_model_whatever_the_silo_count() -> None:
    size = 1_000_000
    model = size * 4
    few = _peak_traced_bytes(2, size)
    many = _peak_traced_bytes(50, size)
    # a float32 running sum (one model) plus the caller's own fresh array (one more, counted
    # here because it is made while tracing), where keeping each silo's would take 50 models
    assert many < 2.2 * model, f"peak {many / model:.2f}x the float32 model"
    # and nothing grows with the number of silos
    assert many - few < model // 20, f"peak grew by {(many - few) / model:.2f}x the model"
