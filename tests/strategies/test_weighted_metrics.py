"""The mean of the silos' metrics is finite for every finite report, however large."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.strategies import weighted_metrics

finite = st.floats(allow_nan=False, allow_infinity=False)
counts = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
reports = st.dictionaries(
    st.sampled_from(["silo-a", "silo-b", "silo-c", "silo-d"]),
    st.fixed_dictionaries({"loss": finite, "num_samples": counts}),
    min_size=1,
)


@settings(max_examples=300, derandomize=True)
@given(reports)
def test_the_mean_is_finite_and_between_the_values(results: dict[str, dict[str, float]]) -> None:
    out = weighted_metrics(results)
    values = [m["loss"] for m in results.values()]
    assert math.isfinite(out["loss"]) and math.isfinite(out["num_samples"])
    slack = 1e-9 * max(abs(v) for v in values)
    assert min(values) - slack <= out["loss"] <= max(values) + slack


def test_two_silos_reporting_the_largest_metrics_average_to_them() -> None:
    out = weighted_metrics(
        {
            "silo-a": {"accuracy": 1.5e308, "num_samples": 10},
            "silo-b": {"accuracy": 1.5e308, "num_samples": 30},
        }
    )
    assert out["accuracy"] == pytest.approx(1.5e308)
    assert out["num_samples"] == 40


def test_values_that_are_not_finite_numbers_are_left_out() -> None:
    out = weighted_metrics(
        {
            "silo-a": {"accuracy": math.inf, "loss": 2.0, "num_samples": 10},
            "silo-b": {"accuracy": 0.5, "loss": math.nan, "num_samples": math.inf},
        }
    )
    assert out == {"accuracy": 0.5, "loss": 2.0, "num_samples": 10}
