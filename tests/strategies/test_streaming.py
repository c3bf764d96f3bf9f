"""Updates given as safetensors files, float32 accuracy, and the memory FedAvg needs."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.errors import AggregationError
from fedsilo.strategies import (
    FedAvg,
    FedOpt,
    FedProx,
    Krum,
    Median,
    ServerOptimizer,
    Strategy,
    TrimmedMean,
    Weighting,
)
from fedsilo.tensors import save_parameters

Arrays = dict[str, npt.NDArray[np.generic]]

FACTORIES: dict[str, Callable[[], Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": lambda: FedOpt(optimizer=ServerOptimizer.ADAM),
    "fedavgm": lambda: FedOpt(optimizer=ServerOptimizer.AVGM),
    "median": Median,
    "trimmed_mean": lambda: TrimmedMean(trim_ratio=0.2),
    "krum": Krum,
    "multi_krum": lambda: Krum(select=None),
}


def _silos(n: int = 5) -> dict[str, Arrays]:
    rng = np.random.default_rng(5)
    return {
        f"s{i}": {
            "w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float64),
            "n": np.array(i, dtype=np.int64),
        }
        for i in range(n)
    }


@pytest.mark.parametrize("name", list(FACTORIES))
def test_a_file_aggregates_like_the_arrays_in_it(name: str, tmp_path: Path) -> None:
    results = _silos()
    current = {k: np.zeros_like(v) for k, v in results["s0"].items()}
    outs = []
    for from_file in (False, True):
        aggregation = FACTORIES[name]().begin_aggregation(1, current)
        for i, (silo, params) in enumerate(results.items()):
            path = tmp_path / f"{silo}.safetensors"
            save_parameters(params, path)
            aggregation.add(silo, path if from_file else params, 1 + i)
        outs.append(aggregation.finish())
    for tensor in ("w", "b", "n"):
        np.testing.assert_array_equal(outs[1][tensor], outs[0][tensor])
        assert outs[1][tensor].dtype == results["s0"][tensor].dtype


def test_an_unreadable_file_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    results = _silos(2)
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("s0", results["s0"], 1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(AggregationError, match=r"silo 's1': cannot read its parameters") as caught:
        aggregation.add("s1", bad, 1)
    assert str(tmp_path) not in str(caught.value)  # no path of the orchestrator's
    with pytest.raises(AggregationError, match=r"silo 's1': cannot read its parameters"):
        aggregation.add("s1", tmp_path / "missing.safetensors", 1)
    aggregation.add("s1", results["s1"], 1)  # a later, valid result from the same silo counts
    out = aggregation.finish()
    np.testing.assert_allclose(out["w"], (results["s0"]["w"] + results["s1"]["w"]) / 2, rtol=1e-6)


def test_a_file_with_other_tensors_is_refused_before_any_is_read(tmp_path: Path) -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("a", {"w": np.ones(3, dtype=np.float32)}, 1)
    path = tmp_path / "b.safetensors"
    save_parameters({"w": np.ones(4, dtype=np.float32)}, path)
    with pytest.raises(AggregationError, match=r"'b'.*'w'.*shape \(4,\)"):
        aggregation.add("b", path, 1)
    np.testing.assert_array_equal(aggregation.finish()["w"], np.ones(3, dtype=np.float32))


@pytest.mark.parametrize("weighting", [Weighting.SAMPLES, Weighting.UNIFORM])
def test_float32_sums_match_a_float64_reference_for_100_silos(weighting: Weighting) -> None:
    rng = np.random.default_rng(2024)
    size, silos = 20_000, 100
    # silos' models are close to one another, as federated models are: mean 1, spread 0.1
    params = rng.normal(1.0, 0.1, size=(silos, size)).astype(np.float32)
    samples = rng.integers(1, 5_000, size=silos)
    aggregation = FedAvg(weighting=weighting).begin_aggregation(1, None)
    for i in range(silos):
        aggregation.add(f"s{i}", {"w": params[i]}, int(samples[i]))
    out = aggregation.finish()["w"]
    weights = samples if weighting is Weighting.SAMPLES else np.ones(silos)
    reference = np.average(params.astype(np.float64), axis=0, weights=weights)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, rtol=1e-6)
    assert np.linalg.norm(out - reference) / np.linalg.norm(reference) < 1e-6


def test_float16_tensors_are_summed_in_float32() -> None:
    aggregation = FedAvg(weighting=Weighting.UNIFORM).begin_aggregation(1, None)
    for i in range(3000):  # 3000 x 1.0 is not representable step by step in float16
        aggregation.add(f"s{i}", {"h": np.ones(2, dtype=np.float16)}, 1)
    out = aggregation.finish()["h"]
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, [1.0, 1.0])


def _peak(paths: list[Path]) -> int:
    tracemalloc.start()
    try:
        aggregation = FedAvg().begin_aggregation(1, None)
        for i, path in enumerate(paths):
            aggregation.add(f"silo-{i}", path, 1 + i % 5)
        out = aggregation.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["t0"].dtype == np.float32
    return peak


def test_aggregating_files_needs_about_one_model_whatever_the_silo_count(tmp_path: Path) -> None:
    tensors, size = 4, 250_000
    model = tensors * size * 4  # 4 MB of float32
    paths = []
    for k in range(3):  # silos may share a file: the aggregation reads, it does not care
        path = tmp_path / f"update-{k}.safetensors"
        save_parameters(
            {f"t{t}": np.full(size, float(k + t), dtype=np.float32) for t in range(tensors)}, path
        )
        paths.append(path)
    few = _peak(paths[:2])
    many = _peak([paths[i % 3] for i in range(60)])
    # the float32 sum (one model), one tensor being read (0.25) and a 0.5 MB scratch buffer
    assert many <= 1.5 * model, f"peak {many / model:.2f}x the model"
    assert many - few <= 0.05 * model, f"peak grew by {(many - few) / model:.2f}x the model"


def test_float16_tensors_with_large_sample_counts_do_not_overflow() -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    aggregation.add("a", {"h": np.full(2, 2.0, dtype=np.float16)}, 100_000)  # 2e5 > float16 max
    aggregation.add("b", {"h": np.full(2, 4.0, dtype=np.float16)}, 300_000)
    np.testing.assert_array_equal(aggregation.finish()["h"], [3.5, 3.5])
