"""Local DP-SGD: one accountant per silo for the whole job, budgets enforced, model intact."""

from __future__ import annotations

import json

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsilo.errors import ConfigError
from fedsilo.privacy import LocalDPSpec, _local
from fedsilo.privacy._accounting import silence_opacus_warnings
from fedsilo.privacy._local import LocalDP, PrivacyBudgetExceeded, check_budget

N_SAMPLES = 64
BATCH = 8
STEPS_PER_EPOCH = N_SAMPLES // BATCH
DELTA = 1e-5


def _loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    """A fresh loader over a fresh dataset object, as a task builds each round."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _train_round(dp: LocalDP, model: nn.Module, round_: int, epochs: int | None = None) -> None:
    """What a task's train() does: wrap, then a plain training loop through the wrappers."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    module, dp_optimizer, loader = dp.make_private(model, optimizer, _loader(), round_=round_)
    with silence_opacus_warnings():  # the silo runner wraps train() in this
        for _ in range(dp.epochs if epochs is None else epochs):
            for x, y in loader:
                dp_optimizer.zero_grad()
                nn.functional.cross_entropy(module(x), y).backward()
                dp_optimizer.step()


def _reference_epsilon(noise: float, steps: int) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=1 / STEPS_PER_EPOCH)
    with silence_opacus_warnings():
        return float(accountant.get_epsilon(delta=DELTA))


def test_epsilon_matches_opacus_accountant_over_rounds() -> None:
    spec = LocalDPSpec(noise_multiplier=1.1, target_delta=DELTA)
    dp = LocalDP(spec, rounds=3, epochs=2, seed=1)
    model = _model()
    for round_ in (1, 2, 3):
        _train_round(dp, model, round_)
        expected = _reference_epsilon(1.1, round_ * 2 * STEPS_PER_EPOCH)
        assert dp.epsilon() == pytest.approx(expected, abs=1e-6)


def test_accountant_is_not_restarted_per_round() -> None:
    dp = LocalDP(LocalDPSpec(noise_multiplier=1.0), rounds=3, epochs=1, seed=1)
    model = _model()
    _train_round(dp, model, 1)
    after_one = dp.epsilon()
    _train_round(dp, model, 2)
    _train_round(dp, model, 3)
    assert dp.epsilon() > after_one * 1.3
    assert dp.history == [(1.0, 1 / STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH)]


def test_target_epsilon_is_met_with_one_noise_multiplier(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    real = _local.get_noise_multiplier

    def counting(**kwargs: object) -> float:
        calls.append(kwargs)
        return float(real(**kwargs))

    monkeypatch.setattr(_local, "get_noise_multiplier", counting)
    dp = LocalDP(LocalDPSpec(target_epsilon=3.0, target_delta=DELTA), rounds=3, epochs=2, seed=2)
    model = _model()
    noises = []
    for round_ in (1, 2, 3):
        _train_round(dp, model, round_)
        noises.append(dp.noise_multiplier)
    assert len(calls) == 1
    assert calls[0]["steps"] == 3 * 2 * STEPS_PER_EPOCH
    assert len(set(noises)) == 1
    assert 0.9 * 3.0 <= dp.epsilon() <= 3.0


def test_state_dict_round_trip_continues_the_accounting() -> None:
    spec = LocalDPSpec(target_epsilon=4.0, target_delta=DELTA)
    first = LocalDP(spec, rounds=3, epochs=1, seed=3)
    model = _model()
    _train_round(first, model, 1)
    _train_round(first, model, 2)
    saved = json.loads(json.dumps(first.state_dict()))
    first.close()

    second = LocalDP(spec, rounds=3, epochs=1, seed=3)  # a new worker process
    second.load_state_dict(saved)
    assert second.epsilon() == pytest.approx(first.epsilon(), abs=1e-9)
    _train_round(second, model, 3)
    noise = first.noise_multiplier
    assert noise is not None and second.noise_multiplier == noise
    assert second.epsilon() == pytest.approx(
        _reference_epsilon(noise, 3 * STEPS_PER_EPOCH), abs=1e-6
    )
    assert second.epsilon() <= 4.0


def test_load_state_dict_refuses_another_accountant() -> None:
    rdp = LocalDP(LocalDPSpec(noise_multiplier=1.0), rounds=1, epochs=1)
    prv = LocalDP(LocalDPSpec(noise_multiplier=1.0, accountant="prv"), rounds=1, epochs=1)
    with pytest.raises(ConfigError, match="accountant"):
        prv.load_state_dict(rdp.state_dict())


def test_training_updates_the_original_module_under_its_own_names() -> None:
    model = _model()
    names = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dp = LocalDP(LocalDPSpec(noise_multiplier=0.5), rounds=1, epochs=1, seed=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    module, _, _ = dp.make_private(model, optimizer, _loader(), round_=1)
    assert {id(p) for p in module.parameters()} == {id(p) for p in model.parameters()}
    dp.close()
    _train_round(dp, model, 1)
    after = model.state_dict()
    assert list(after) == names
    assert not any(k.startswith("_module.") for k in after)
    assert all(not torch.equal(before[k], after[k]) for k in names)


def test_seeded_runs_reproduce_and_unseeded_runs_differ() -> None:
    def run(seed: int | None) -> dict[str, torch.Tensor]:
        model = _model()
        dp = LocalDP(LocalDPSpec(noise_multiplier=1.0), rounds=2, epochs=1, seed=seed)
        _train_round(dp, model, 1)
        _train_round(dp, model, 2)
        return model.state_dict()

    first, second = run(7), run(7)
    assert all(torch.equal(first[k], second[k]) for k in first)
    third, fourth = run(None), run(None)
    assert any(not torch.equal(third[k], fourth[k]) for k in third)


def test_check_budget_refuses_a_target_above_the_cap() -> None:
    spec = LocalDPSpec(target_epsilon=8.0)
    check_budget(spec, None)
    check_budget(spec, 8.0)
    with pytest.raises(PrivacyBudgetExceeded, match="cap") as info:
        check_budget(spec, 5.0)
    assert (info.value.epsilon, info.value.limit) == (8.0, 5.0)
    with pytest.raises(PrivacyBudgetExceeded):
        LocalDP(spec, rounds=1, epochs=1, epsilon_cap=5.0)


def test_a_noise_spec_that_would_pass_the_cap_is_refused_before_training() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dp = LocalDP(LocalDPSpec(noise_multiplier=0.6), rounds=5, epochs=2, epsilon_cap=2.0)
    with pytest.raises(PrivacyBudgetExceeded, match="limit"):
        _train_round(dp, model, 1)
    assert dp.epsilon() == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rounds_beyond_the_job_are_refused() -> None:
    dp = LocalDP(LocalDPSpec(target_epsilon=2.0), rounds=1, epochs=1, seed=5)
    model = _model()
    _train_round(dp, model, 1)
    with pytest.raises(PrivacyBudgetExceeded):
        _train_round(dp, model, 2)
    assert dp.epsilon() <= 2.0 * 1.01


def test_training_past_the_plan_stops_at_the_limit() -> None:
    dp = LocalDP(LocalDPSpec(target_epsilon=2.0), rounds=1, epochs=1, seed=6)
    with pytest.raises(PrivacyBudgetExceeded, match="planned"):
        _train_round(dp, _model(), 1, epochs=3)
    assert dp.epsilon() < 2.0 * 1.2


def test_batchnorm_is_refused_with_advice() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    dp = LocalDP(LocalDPSpec(noise_multiplier=1.0), rounds=1, epochs=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="GroupNorm"):
        dp.make_private(model, optimizer, _loader(), round_=1)


def test_the_prv_accountant_also_meets_the_target_over_rounds() -> None:
    dp = LocalDP(
        LocalDPSpec(target_epsilon=3.0, target_delta=DELTA, accountant="prv"),
        rounds=2,
        epochs=1,
        seed=8,
    )
    model = _model()
    _train_round(dp, model, 1)
    after_one = dp.epsilon()
    _train_round(dp, model, 2)
    assert after_one < dp.epsilon() <= 3.0 * 1.01
    assert dp.epsilon() >= 0.9 * 3.0
