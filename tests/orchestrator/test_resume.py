"""A job's checkpoint: the strategy's state saved with each round, and read back."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from fedsilo.orchestrator._db import JobRow, Store
from fedsilo.orchestrator._resume import CannotResume, restore_strategy, strategy_state
from fedsilo.privacy import strategy_for
from fedsilo.privacy._spec import PrivacySpec
from fedsilo.strategies import FedOptSpec
from fedsilo.strategies._specs import FedAvgSpec

CURRENT = {"w": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
ROUNDS = [
    {"w": np.array([1.5, 1.0, 3.5], dtype=np.float32)},
    {"w": np.array([0.5, 2.5, 2.0], dtype=np.float32)},
    {"w": np.array([1.0, 1.0, 1.0], dtype=np.float32)},
]


def _round(strategy, current, update):  # type: ignore[no-untyped-def]
    aggregation = strategy.begin_aggregation(1, current)
    aggregation.add("silo-a", update, 10)
    return aggregation.finish()


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_a_server_optimizer_goes_on_from_its_saved_moments(name: str) -> None:
    spec = FedOptSpec(name=name)
    straight = strategy_for(spec, PrivacySpec())
    current = CURRENT
    for update in ROUNDS[:2]:
        current = _round(straight, current, update)
    arrays, meta = strategy_state(straight)
    assert arrays  # the moments
    restored = strategy_for(spec, PrivacySpec())
    restore_strategy(restored, arrays, json.dumps(meta))
    a = _round(straight, current, ROUNDS[2])
    b = _round(restored, current, ROUNDS[2])
    np.testing.assert_array_equal(a["w"], b["w"])


def test_central_dp_accounting_goes_on_from_where_it_was() -> None:
    privacy = PrivacySpec.model_validate({"central": {"noise_multiplier": 1.0}})
    straight = strategy_for(FedAvgSpec(), privacy)
    current = CURRENT
    for update in ROUNDS[:2]:
        current = _round(straight, current, update)
    arrays, meta = strategy_state(straight)
    restored = strategy_for(FedAvgSpec(), privacy)
    restore_strategy(restored, arrays, json.dumps(meta))
    assert restored.epsilon() == straight.epsilon() > 0  # type: ignore[attr-defined]


def test_a_state_of_another_kind_is_refused_saying_so() -> None:
    fedavg = strategy_for(FedAvgSpec(), PrivacySpec())
    with pytest.raises(CannotResume, match="another version"):
        restore_strategy(fedavg, {}, json.dumps({"format": 99}))
    with pytest.raises(CannotResume, match="the job has none"):
        restore_strategy(fedavg, {"m/w": np.zeros(3)}, json.dumps({"format": 1}))


def test_the_checkpoint_is_saved_with_its_round(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.add_job(
            JobRow(
                id="j1",
                name="j",
                submitter="alice",
                spec_json="{}",
                bundle_digest="d" * 64,
                state="running",
                created_at=time.time(),
            )
        )
        assert store.checkpoint("j1") is None
        for round_ in (0, 1):
            store.start_round("j1", round_)
            store.finish_round("j1", round_, f"{round_}" * 64, checkpoint=(None, '{"format": 1}'))
        saved = store.checkpoint("j1")
        assert saved is not None
        assert (saved.round, saved.global_digest, saved.state_digest) == (1, "1" * 64, None)
        assert [j.id for j in store.unfinished_jobs()] == ["j1"]
    finally:
        store.close()
