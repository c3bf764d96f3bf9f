"""The metrics channel: declared names only, within the silo policy's count and digits."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedsilo.approval import load_policy
from fedsilo.jobs import DEFAULT_METRICS, JobSpec
from fedsilo.silo._metrics import MetricBudget, gate_metrics, round_digits

REPORT = {"loss": 0.123456789, "accuracy": 0.987654321, "num_samples": 128.4, "p_1234": 5.0}


def test_a_metric_the_job_did_not_declare_stays_in_the_silo() -> None:
    gated = gate_metrics(REPORT, ("loss", "accuracy"))
    assert gated.sent == {"loss": 0.123456789, "accuracy": 0.987654321, "num_samples": 128.0}
    assert gated.withheld == ("p_1234",)


def test_a_job_that_declares_nothing_sends_only_fedsilos_own() -> None:
    gated = gate_metrics({**REPORT, "epsilon": 1.5}, None)
    assert gated.sent == {"num_samples": 128.0, "epsilon": 1.5}
    assert gated.withheld == ("accuracy", "loss", "p_1234")


def test_the_budget_bounds_the_count_in_the_jobs_order_and_rounds_every_value() -> None:
    gated = gate_metrics(
        {**REPORT, "epsilon": 1.23456}, ("accuracy", "loss"), MetricBudget(max_count=1, digits=2)
    )
    assert gated.sent == {"accuracy": 0.99, "num_samples": 128.0, "epsilon": 1.2}
    assert gated.over_budget == ("loss",)


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [(123456.0, 2, 120000.0), (-0.00123456, 3, -0.00123), (0.0, 1, 0.0), (1e308, 1, 1e308)],
)
def test_values_keep_their_significant_digits(value: float, digits: int, expected: float) -> None:
    assert round_digits(value, digits) == expected


def test_the_job_spec_declares_metric_names() -> None:
    base = {"name": "j", "code": ".", "silos": ["a"], "rounds": 1}
    assert JobSpec.model_validate(base).metrics == DEFAULT_METRICS
    spec = JobSpec.model_validate({**base, "metrics": ["f1", "auc"]})
    assert spec.metrics == ("f1", "auc")
    for bad in (["a b"], ["f1", "f1"], [f"m{i}" for i in range(65)], ["x" * 65]):
        with pytest.raises((ValidationError, ValueError)):
            JobSpec.model_validate({**base, "metrics": bad})


def test_a_policy_lowers_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: []\ndefault: reject\nmetrics: {max_count: 4, digits: 3}\n")
    assert load_policy(path).metrics == MetricBudget(max_count=4, digits=3)
    path.write_text("rules: []\ndefault: reject\nmetrics: {max_count: 65}\n")
    with pytest.raises(Exception, match=r"metrics\.max_count"):
        load_policy(path)
