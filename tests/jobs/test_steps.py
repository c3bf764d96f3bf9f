"""The rules of a literal pipeline's steps, as the orchestrator and the simulation keep them."""

from __future__ import annotations

import pytest

from fedsilo.errors import StepRefused
from fedsilo.jobs._steps import StepLedger

SILOS = ("a", "b")


def _ledger() -> StepLedger:
    ledger = StepLedger("job-1", SILOS, rounds=2)
    ledger.add_model("m0", 0)
    return ledger


def test_a_round_trains_each_silo_once_from_one_model_then_aggregates() -> None:
    ledger = _ledger()
    ledger.add_step("s1", "train", "a", "m0", 1)
    ledger.add_step("s2", "train", "b", "m0", 1)
    steps = ledger.check_aggregate(["s1", "s2"], 1, lambda _id: True)
    ledger.aggregated(steps, 1, "m1")
    assert ledger.model_round("m1") == 1
    with pytest.raises(StepRefused, match="already trained in round 1"):
        ledger.check_step("train", "a", "m1", 1)
    with pytest.raises(StepRefused, match="already in an aggregate"):
        ledger.check_aggregate(["s1"], 1, lambda _id: True)
    ledger.add_step("s3", "train", "a", "m1", 2)  # the next round goes on


@pytest.mark.parametrize(
    ("kind", "silo", "model", "round_", "why"),
    [
        ("train", "z", "m0", 1, "silo 'z' is not in job job-1"),
        ("train", "a", "nope", 1, "is not a global model of job job-1"),
        ("train", "a", "m0", 3, "outside the job's rounds 1..2"),
        ("train", "a", "m0", 0, "outside the job's rounds 1..2"),
        ("predict", "a", "m0", 1, "does not 'predict'"),
    ],
)
def test_steps_outside_what_the_silos_approved_are_refused(
    kind: str, silo: str, model: str, round_: int, why: str
) -> None:
    with pytest.raises(StepRefused, match=why):
        _ledger().check_step(kind, silo, model, round_)


def test_an_evaluation_takes_the_round_of_its_model() -> None:
    ledger = _ledger()
    assert ledger.add_step("e", "evaluate", "a", "m0", 7).round == 0


def test_an_aggregate_refuses_running_failed_mixed_or_duplicate_steps() -> None:
    ledger = _ledger()
    ledger.add_model("other", 0)
    ledger.add_step("s1", "train", "a", "m0", 1)
    ledger.add_step("s2", "train", "b", "other", 1)
    ledger.add_step("e", "evaluate", "a", "m0", 0)
    with pytest.raises(StepRefused, match="still running"):
        ledger.check_aggregate(["s1"], 1, lambda _id: None)
    with pytest.raises(StepRefused, match="failed"):
        ledger.check_aggregate(["s1"], 1, lambda _id: False)
    with pytest.raises(StepRefused, match="same model"):
        ledger.check_aggregate(["s1", "s2"], 1, lambda _id: True)
    with pytest.raises(StepRefused, match="at most one train step per silo"):
        ledger.check_aggregate(["s1", "s1"], 1, lambda _id: True)
    with pytest.raises(StepRefused, match="not a train step"):
        ledger.check_aggregate(["e"], 1, lambda _id: True)
    with pytest.raises(StepRefused, match="trained in round 1, not 2"):
        ledger.check_aggregate(["s1"], 2, lambda _id: True)
