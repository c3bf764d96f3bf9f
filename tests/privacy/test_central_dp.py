"""Central DP (DP-FedAvg): clipped, uniformly averaged, noised updates, accounted per round."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from opacus.accountants import RDPAccountant

from fedsilo.errors import AggregationError
from fedsilo.privacy import CentralDPSpec
from fedsilo.privacy._accounting import silence_opacus_warnings
from fedsilo.privacy._central import CentralDP
from fedsilo.privacy._clip import clip_update, clipped_delta
from fedsilo.strategies import FedAvg
from fedsilo.tensors import save_parameters

Arrays = dict[str, npt.NDArray[np.generic]]


def _current() -> Arrays:
    return {
        "w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4),
        "b": np.array([0.25, -0.5], dtype=np.float32),
    }


def _update(current: Arrays, scale: float, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in current.items()
    }


def _norm(a: Arrays, b: Arrays) -> float:
    return float(
        np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2) for k in a))
    )


def _aggregate(dp: CentralDP, round_: int, current: Arrays, updates: list[Arrays]) -> Arrays:
    aggregation = dp.begin_aggregation(round_, current)
    for i, params in enumerate(updates):
        aggregation.add(f"silo-{i}", params, num_samples=10 * (i + 1))
    return aggregation.finish()


def test_a_large_update_is_clipped_to_exactly_clip_norm_and_small_ones_kept() -> None:
    current = _current()
    large, small = _update(current, 5.0, 1), _update(current, 0.01, 2)
    assert _norm(large, current) > 1.0 > _norm(small, current)
    clipped = clipped_delta(large, current, 1.0)
    assert np.sqrt(sum(np.sum(d**2) for d in clipped.values())) == pytest.approx(1.0, rel=1e-12)
    direction = (large["w"].astype(np.float64) - current["w"]) / _norm(large, current)
    assert np.allclose(clipped["w"], direction)
    kept = clip_update(small, current, 1.0)
    assert all(np.allclose(kept[k], small[k], rtol=0, atol=1e-7) for k in small)
    assert all(kept[k].dtype == np.float32 for k in kept)
    assert _norm(clip_update(large, current, 1.0), current) == pytest.approx(1.0, rel=1e-6)


def test_without_noise_the_result_is_current_plus_the_mean_of_clipped_updates() -> None:
    current = _current()
    updates = [_update(current, s, i) for i, s in enumerate((0.05, 3.0, 10.0))]
    dp = CentralDP(FedAvg(), CentralDPSpec(clip_norm=0.5, noise_multiplier=0.0), seed=0)
    result = _aggregate(dp, 1, current, updates)
    deltas = [clipped_delta(u, current, 0.5) for u in updates]
    for name, base in current.items():
        expected = base.astype(np.float64) + sum(d[name] for d in deltas) / 3
        assert result[name].dtype == base.dtype
        assert np.allclose(result[name], expected, atol=1e-6)
    assert dp.epsilon() == float("inf")


def test_noise_std_is_noise_multiplier_times_clip_norm_over_n() -> None:
    current: Arrays = {"w": np.zeros(200_000, dtype=np.float64)}
    spec = CentralDPSpec(clip_norm=2.0, noise_multiplier=1.5)
    n = 4
    result = _aggregate(CentralDP(FedAvg(), spec, seed=11), 1, current, [current] * n)
    expected = 1.5 * 2.0 / n
    assert float(np.std(result["w"])) == pytest.approx(expected, rel=0.02)
    assert abs(float(np.mean(result["w"]))) < 5 * expected / np.sqrt(200_000)


def test_epsilon_grows_per_round_and_matches_the_rdp_accountant() -> None:
    spec = CentralDPSpec(clip_norm=1.0, noise_multiplier=1.2, target_delta=1e-5)
    dp = CentralDP(FedAvg(), spec, seed=3)
    current = _current()
    reference = RDPAccountant()
    epsilons = []
    for round_ in (1, 2, 3):
        current = _aggregate(dp, round_, current, [_update(current, 1.0, round_)] * 2)
        reference.step(noise_multiplier=1.2, sample_rate=1.0)
        with silence_opacus_warnings():
            expected = float(reference.get_epsilon(delta=1e-5))
        assert dp.epsilon() == pytest.approx(expected, abs=1e-9)
        epsilons.append(dp.epsilon())
    assert epsilons[0] < epsilons[1] < epsilons[2]
    report = dp.report()
    assert [r.round for r in report] == [1, 2, 3]
    assert [r.epsilon for r in report] == pytest.approx(epsilons)
    assert {r.silos for r in report} == {2}
    assert dp.epsilon(delta=1e-3) < dp.epsilon()


def test_inputs_are_never_mutated() -> None:
    current = _current()
    updates = [_update(current, s, i) for i, s in enumerate((0.1, 4.0))]
    frozen_current, frozen_updates = copy.deepcopy(current), copy.deepcopy(updates)
    dp = CentralDP(FedAvg(), CentralDPSpec(clip_norm=1.0, noise_multiplier=1.0), seed=1)
    _aggregate(dp, 1, current, updates)
    deltas = [clipped_delta(u, current, 1.0) for u in updates]
    total = {k: deltas[0][k] + deltas[1][k] for k in current}
    frozen_total = copy.deepcopy(total)
    dp.add_noise_to_sum(total, 2, current, round_=2)
    clip_update(updates[1], current, 1.0)
    for name in current:
        assert np.array_equal(current[name], frozen_current[name])
        assert np.array_equal(total[name], frozen_total[name])
        for got, kept in zip(updates, frozen_updates, strict=True):
            assert np.array_equal(got[name], kept[name])


def test_add_noise_to_sum_matches_the_streaming_path() -> None:
    current = _current()
    updates = [_update(current, s, i) for i, s in enumerate((0.1, 2.0, 7.0))]
    spec = CentralDPSpec(clip_norm=1.0, noise_multiplier=0.8)
    streamed = _aggregate(CentralDP(FedAvg(), spec, seed=42), 5, current, updates)
    deltas = [clipped_delta(u, current, 1.0) for u in updates]
    total = {k: sum(d[k] for d in deltas) for k in current}
    secure = CentralDP(FedAvg(), spec, seed=42)
    summed = secure.add_noise_to_sum(total, 3, current, round_=5)
    assert all(np.allclose(streamed[k], summed[k], atol=1e-6) for k in current)
    assert secure.epsilon() > 0 and len(secure.report()) == 1
    other = CentralDP(FedAvg(), spec).add_noise_to_sum(total, 3, current, round_=5)
    assert not np.allclose(other["w"], summed["w"])


def test_unseeded_noise_differs_between_runs() -> None:
    current = _current()
    spec = CentralDPSpec(clip_norm=1.0, noise_multiplier=1.0)
    first = _aggregate(CentralDP(FedAvg(), spec), 1, current, [current])
    second = _aggregate(CentralDP(FedAvg(), spec), 1, current, [current])
    assert not np.array_equal(first["w"], second["w"])


def test_configuration_is_the_inner_strategys() -> None:
    inner = FedAvg()
    dp = CentralDP(inner, CentralDPSpec())
    assert dp.configure_round(3, ["a", "b"]) == inner.configure_round(3, ["a", "b"])


def test_bad_rounds_are_refused() -> None:
    dp = CentralDP(FedAvg(), CentralDPSpec(), seed=0)
    with pytest.raises(AggregationError, match="current global parameters"):
        dp.begin_aggregation(1, None)
    current = _current()
    aggregation = dp.begin_aggregation(1, current)
    with pytest.raises(AggregationError, match="tensors"):
        aggregation.add("a", {"w": current["w"]}, 1)
    with pytest.raises(AggregationError, match="shape"):
        aggregation.add("a", {"w": current["w"].T, "b": current["b"]}, 1)
    with pytest.raises(AggregationError, match="not finite"):
        aggregation.add("a", {"w": current["w"] * np.nan, "b": current["b"]}, 1)
    with pytest.raises(AggregationError, match="no silo"):
        aggregation.finish(failures=["a"])
    aggregation.add("a", current, 1)
    with pytest.raises(AggregationError, match="two results"):
        aggregation.add("a", current, 1)
    aggregation.finish()
    with pytest.raises(AggregationError, match="already finished"):
        aggregation.finish()
    assert len(dp.report()) == 1


def test_state_dict_round_trip_continues_the_accounting() -> None:
    spec = CentralDPSpec(noise_multiplier=1.0)
    first = CentralDP(FedAvg(), spec, seed=0)
    current = _current()
    for round_ in (1, 2):
        current = _aggregate(first, round_, current, [current])
    second = CentralDP(FedAvg(), spec, seed=0)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert second.epsilon() == pytest.approx(first.epsilon())
    _aggregate(first, 3, current, [current])
    _aggregate(second, 3, current, [current])
    assert second.epsilon() == pytest.approx(first.epsilon())
    assert second.report() == first.report()


def test_updates_given_as_files_aggregate_like_updates_in_memory(tmp_path: Path) -> None:
    current = _current()
    updates = [_update(current, s, i) for i, s in enumerate((0.2, 6.0))]
    spec = CentralDPSpec(clip_norm=1.0, noise_multiplier=0.5)
    in_memory = _aggregate(CentralDP(FedAvg(), spec, seed=9), 1, current, updates)
    aggregation = CentralDP(FedAvg(), spec, seed=9).begin_aggregation(1, current)
    for i, params in enumerate(updates):
        path = tmp_path / f"silo-{i}.safetensors"
        save_parameters(params, path)
        aggregation.add(f"silo-{i}", path, num_samples=1)
    from_files = aggregation.finish()
    assert all(np.array_equal(in_memory[k], from_files[k]) for k in current)
