"""Strategy specs: the union parses by name, refuses what a strategy does not read, and
``build_strategy`` builds every named strategy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from fedsilo.strategies import (
    STRATEGIES,
    FedAvg,
    FedAvgSpec,
    FedOpt,
    FedOptSpec,
    FedProx,
    FedProxSpec,
    Krum,
    KrumSpec,
    Median,
    MedianSpec,
    ServerOptimizer,
    StrategySpec,
    TrimmedMean,
    TrimmedMeanSpec,
    Weighting,
    build_strategy,
)

SPEC: TypeAdapter[StrategySpec] = TypeAdapter(StrategySpec)


@pytest.mark.parametrize(
    ("data", "model"),
    [
        ({"name": "fedavg"}, FedAvgSpec),
        ({"name": "fedprox", "proximal_mu": 0.1}, FedProxSpec),
        ({"name": "fedavgm"}, FedOptSpec),
        ({"name": "fedadam", "beta2": 0.999}, FedOptSpec),
        ({"name": "fedyogi"}, FedOptSpec),
        ({"name": "fedadagrad", "tau": 1e-9}, FedOptSpec),
        ({"name": "median"}, MedianSpec),
        ({"name": "trimmed_mean", "trim_ratio": 0.2}, TrimmedMeanSpec),
        ({"name": "krum", "byzantine": 2}, KrumSpec),
        ({"name": "multi_krum", "select": 3}, KrumSpec),
    ],
)
def test_the_name_picks_the_model(data: dict[str, Any], model: type) -> None:
    spec = SPEC.validate_python(data)
    assert type(spec) is model
    assert spec.name == data["name"]


def test_server_lr_default_depends_on_the_variant() -> None:
    assert FedOptSpec(name="fedavgm").server_lr == 1.0
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        assert SPEC.validate_python({"name": name}).server_lr == 0.01  # type: ignore[union-attr]
    assert FedOptSpec(name="fedadam", server_lr=0.5).server_lr == 0.5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "fedsgd"}, "does not match any of the expected tags"),
        ({"name": "fedavg", "proximal_mu": 0.1}, "Extra inputs are not permitted"),
        ({"name": "fedavg", "weighting": "explicit"}, "needs 'weights'"),
        ({"name": "fedavg", "weighting": "explicit", "weights": {"a": -1}}, "must be >= 0"),
        ({"name": "fedavg", "weighting": "explicit", "weights": {"a": 0}}, "not all be zero"),
        ({"name": "fedavg", "weights": {"a": 1}}, "only used with weighting: explicit"),
        ({"name": "fedprox", "proximal_mu": 0}, "greater than 0"),
        ({"name": "fedprox", "weighting": "explicit"}, "needs 'weights'"),
        ({"name": "fedadam", "server_lr": 0}, "greater than 0"),
        ({"name": "fedadam", "server_momentum": 0.5}, "does not use server_momentum"),
        ({"name": "fedavgm", "beta1": 0.5, "tau": 0.1}, "does not use beta1, tau"),
        ({"name": "fedadagrad", "beta2": 0.9}, "does not use beta2"),
        ({"name": "fedavgm", "server_momentum": 1.0}, "less than 1"),
        ({"name": "fedyogi", "weights": {"a": 1}}, "only used with weighting: explicit"),
        ({"name": "median", "trim_ratio": 0.1}, "Extra inputs are not permitted"),
        ({"name": "trimmed_mean", "trim_ratio": 0.5}, "less than 0.5"),
        ({"name": "trimmed_mean", "trim_ratio": -0.1}, "greater than or equal to 0"),
        ({"name": "krum", "byzantine": -1}, "greater than or equal to 0"),
        ({"name": "krum", "select": 3}, "only used with name: multi_krum"),
        ({"name": "multi_krum", "select": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_specs_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SPEC.validate_python(data)


def test_specs_are_frozen() -> None:
    spec = FedAvgSpec()
    with pytest.raises(ValidationError, match="frozen"):
        spec.weighting = Weighting.UNIFORM  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        (FedAvgSpec(), FedAvg),
        (FedProxSpec(), FedProx),
        (FedOptSpec(name="fedavgm"), FedOpt),
        (FedOptSpec(name="fedadagrad"), FedOpt),
        (FedOptSpec(name="fedadam"), FedOpt),
        (FedOptSpec(name="fedyogi"), FedOpt),
        (MedianSpec(), Median),
        (TrimmedMeanSpec(), TrimmedMean),
        (KrumSpec(name="krum"), Krum),
        (KrumSpec(name="multi_krum"), Krum),
    ],
)
def test_build_strategy_for_every_name(spec: StrategySpec, cls: type) -> None:
    strategy = build_strategy(spec)
    assert type(strategy) is cls
    current = {"w": np.zeros(2, dtype=np.float32)}
    aggregation = strategy.begin_aggregation(1, current)
    for i in range(5):
        aggregation.add(f"s{i}", {"w": np.full(2, 1.0, dtype=np.float32)}, 1)
    out = aggregation.finish()
    assert out["w"].shape == (2,)


def test_every_name_in_the_union_has_a_strategy() -> None:
    assert set(STRATEGIES) == {
        "fedavg",
        "fedprox",
        "fedavgm",
        "fedadagrad",
        "fedadam",
        "fedyogi",
        "median",
        "trimmed_mean",
        "krum",
        "multi_krum",
    }


def test_specs_carry_their_parameters_into_the_strategy() -> None:
    fedopt = build_strategy(FedOptSpec(name="fedyogi", beta1=0.5, beta2=0.7, tau=0.2))
    assert isinstance(fedopt, FedOpt)
    assert fedopt.optimizer is ServerOptimizer.YOGI
    assert (fedopt.server_lr, fedopt.beta1, fedopt.beta2, fedopt.tau) == (0.01, 0.5, 0.7, 0.2)
    krum = build_strategy(KrumSpec(name="krum", byzantine=2))
    assert isinstance(krum, Krum) and (krum.byzantine, krum.select) == (2, 1)
    multi = build_strategy(KrumSpec(name="multi_krum"))
    assert isinstance(multi, Krum) and multi.select is None
    trimmed = build_strategy(TrimmedMeanSpec(trim_ratio=0.3))
    assert isinstance(trimmed, TrimmedMean) and trimmed.trim_ratio == 0.3


def test_fedprox_sends_proximal_mu_to_every_silo() -> None:
    strategy = build_strategy(FedProxSpec(proximal_mu=0.25))
    assert strategy.configure_round(3, ["a", "b"]) == {
        "a": {"proximal_mu": 0.25},
        "b": {"proximal_mu": 0.25},
    }


def test_fedprox_aggregates_as_fedavg() -> None:
    results = {"a": ({"w": np.array([1.0, 2.0])}, 1), "b": ({"w": np.array([3.0, 6.0])}, 3)}
    outs = []
    for strategy in (FedProx(proximal_mu=1.0), FedAvg()):
        aggregation = strategy.begin_aggregation(1, None)
        for silo, (params, samples) in results.items():
            aggregation.add(silo, params, samples)
        outs.append(aggregation.finish()["w"])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], [2.5, 5.0])


def test_other_strategies_send_no_configuration() -> None:
    for spec in (FedAvgSpec(), FedOptSpec(name="fedadam"), MedianSpec(), KrumSpec(name="krum")):
        assert build_strategy(spec).configure_round(1, ["a"]) == {"a": {}}


def test_from_spec_refuses_another_strategys_spec() -> None:
    with pytest.raises(TypeError, match="FedOptSpec"):
        FedOpt.from_spec(FedAvgSpec())


def test_a_default_server_lr_is_not_written_back_as_the_users() -> None:
    spec = FedOptSpec(name="fedadam")
    assert spec.server_lr == 0.01 and "server_lr" not in spec.model_fields_set
    again = FedOptSpec.model_validate({**spec.model_dump(exclude_unset=True), "name": "fedavgm"})
    assert again.server_lr == 1.0  # fedavgm's own default, not fedadam's


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_server_optimizer_spec_survives_its_own_json(name: str) -> None:
    spec = FedOptSpec(name=name)  # type: ignore[arg-type]
    assert FedOptSpec.model_validate_json(spec.model_dump_json()) == spec
