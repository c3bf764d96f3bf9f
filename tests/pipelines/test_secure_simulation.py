"""The simulation under secure aggregation gives the plain job's model, to fixed-point error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec, load_job
from fedsilo.pipelines import simulate


def _variant(spec: JobSpec, **changes: Any) -> JobSpec:
    return JobSpec.model_validate({**spec.model_dump(mode="json"), **changes})


SECURE = {"secure_aggregation": {"fixed_point_bits": 24}}


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "fedavg"},
        {"name": "fedavg", "weighting": "uniform"},
        {"name": "fedavg", "weighting": "explicit", "weights": {"a": 1, "b": 3, "c": 0.5}},
        {"name": "fedadam", "server_lr": 0.05},
        {"name": "fedprox", "proximal_mu": 0.1},
    ],
    ids=["samples", "uniform", "explicit", "fedadam", "fedprox"],
)
def test_secure_model_equals_the_plain_model(
    job: tuple[JobSpec, Path],
    silo_inputs: dict[str, dict[str, Path]],
    tmp_path: Path,
    strategy: dict[str, Any],
) -> None:
    spec, code = job
    if "weights" in strategy:
        names = list(spec.silos)
        strategy = {
            **strategy,
            "weights": dict(zip(names, strategy["weights"].values(), strict=True)),
        }
    plain = _variant(spec, strategy=strategy)
    secure = _variant(spec, strategy=strategy, privacy=SECURE)
    a = simulate(plain, code, silo_inputs, work_root=tmp_path / "plain")
    b = simulate(secure, code, silo_inputs, work_root=tmp_path / "secure")
    assert set(a.parameters) == set(b.parameters)
    for name, value in a.parameters.items():
        # 24 fractional bits: each weighted coordinate is off by at most 2**-25 before
        # the division by the total weight; three rounds of training amplify it a little
        np.testing.assert_allclose(b.parameters[name], value, atol=2e-5, rtol=0)
    assert b.history[-1].privacy["secure_aggregation_silos"] == len(spec.silos)
    assert b.final_metrics["accuracy"] == pytest.approx(a.final_metrics["accuracy"], abs=0.01)


def test_secure_aggregation_with_central_dp_matches_dp_fedavg(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    """Silos clip, the orchestrator noises the sum: DP-FedAvg without seeing any update."""
    spec, code = job
    central = {"clip_norm": 0.5, "noise_multiplier": 0.0}
    plain = _variant(spec, privacy={"central": central})
    secure = _variant(spec, privacy={"central": central, **SECURE})
    a = simulate(plain, code, silo_inputs, work_root=tmp_path / "plain")
    b = simulate(secure, code, silo_inputs, work_root=tmp_path / "secure")
    for name, value in a.parameters.items():
        np.testing.assert_allclose(b.parameters[name], value, atol=2e-5, rtol=0)
    assert b.history[-1].privacy["central_epsilon"] == a.history[-1].privacy["central_epsilon"]


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
def test_strategies_that_need_each_update_are_refused(job: tuple[JobSpec, Path], name: str) -> None:
    spec, _ = job
    with pytest.raises(ValueError, match="secure aggregation shows the orchestrator only"):
        _variant(spec, strategy={"name": name}, privacy=SECURE)


def test_threshold_above_the_silos_is_refused(job: tuple[JobSpec, Path]) -> None:
    spec, _ = job
    with pytest.raises(ValueError, match="threshold 4 is more than the job's 3 silos"):
        _variant(spec, privacy={"secure_aggregation": {"threshold": 4}})


def test_one_silo_cannot_aggregate_securely(job: tuple[JobSpec, Path]) -> None:
    spec, _ = job
    with pytest.raises(ValueError, match="at least 2 silos"):
        _variant(spec, silos=[spec.silos[0]], privacy=SECURE)


def test_the_refusal_names_the_job_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "task.py").write_text("")
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: j\ncode: task\nsilos: [a, b, c]\nrounds: 2\n"
        "strategy: {name: median}\nprivacy:\n  secure_aggregation: {}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_job(job)
    text = str(info.value)
    assert str(job) in text and "strategy" in text and "median" in text
