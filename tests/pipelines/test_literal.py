"""A literal pipeline in one process: the loop of your own gives the scatter-gather model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.errors import ConfigError, StepRefused
from fedsilo.jobs import JobSpec
from fedsilo.pipelines import local_literal, simulate
from fedsilo.tensors import load_parameters


def _literal(spec: JobSpec, **changes: Any) -> JobSpec:
    return JobSpec.model_validate(
        {**spec.model_dump(mode="json", exclude_unset=True), "pipeline": "literal", **changes}
    )


@pytest.mark.parametrize("strategy", [{"name": "fedavg"}, {"name": "fedadam", "server_lr": 0.05}])
def test_the_literal_loop_gives_the_scatter_gather_model(
    job: tuple[JobSpec, Path],
    silo_inputs: dict[str, dict[str, Path]],
    tmp_path: Path,
    strategy: dict[str, Any],
) -> None:
    spec, code = job
    spec = JobSpec.model_validate({**spec.model_dump(mode="json"), "strategy": strategy})
    gathered = simulate(spec, code, silo_inputs, work_root=tmp_path / "sg")
    evaluations = []
    with local_literal(_literal(spec), code, silo_inputs, work_root=tmp_path / "lit") as job_:
        model = job_.initial_model()
        for r in range(1, spec.rounds + 1):
            updates = [job_.train(silo, model, round=r) for silo in job_.silos]
            assert all(u.metrics()["num_samples"] > 0 for u in updates)
            model = job_.aggregate(updates)
            evaluations.append(job_.evaluate(model))
        job_.finish(model)
        job_.save_model(tmp_path / "model.safetensors")
    final = load_parameters(tmp_path / "model.safetensors")
    for name, value in gathered.parameters.items():
        np.testing.assert_allclose(final[name], value, rtol=1e-6, atol=1e-7)
    for evaluation, info in zip(evaluations, gathered.history, strict=True):
        for silo, metrics in evaluation.items():
            assert metrics["accuracy"] == pytest.approx(info.evaluate[silo]["accuracy"], abs=1e-6)


def test_a_loop_that_breaks_the_rules_is_told_why(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    spec, code = job
    literal = local_literal(_literal(spec), code, silo_inputs, work_root=tmp_path)
    model = literal.initial_model()
    silo = literal.silos[0]
    step = literal.train(silo, model, round=1)
    with pytest.raises(StepRefused, match="already trained in round 1"):
        literal.train(silo, model, round=1)
    with pytest.raises(StepRefused, match=f"outside the job's rounds 1..{spec.rounds}"):
        literal.train(silo, model, round=spec.rounds + 1)
    literal.aggregate([step])
    with pytest.raises(StepRefused, match="no final model"):
        literal.save_model(tmp_path / "m.safetensors")


def test_a_scatter_gather_spec_is_not_a_literal_pipeline(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    spec, code = job
    with pytest.raises(ConfigError, match="needs 'pipeline: literal'"):
        local_literal(spec, code, silo_inputs, work_root=tmp_path)


def test_a_literal_pipeline_refuses_secure_aggregation(job: tuple[JobSpec, Path]) -> None:
    spec, _ = job
    with pytest.raises(ValueError, match="a literal pipeline does not run secure aggregation"):
        _literal(spec, privacy={"secure_aggregation": {}})
