"""A literal pipeline over the real processes: the submitter's loop drives the federation."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.errors import FedsiloError, JobFailed, TaskFailed
from fedsilo.jobs import JobSpec, load_job
from fedsilo.pipelines import local_literal, simulate, start_literal, workspace_inputs
from fedsilo.tensors import load_parameters
from tests.integration.conftest import SILOS, Federation, write_job

pytestmark = pytest.mark.integration


def test_the_loop_over_the_federation_gives_the_models_of_one_process(running: Federation) -> None:
    job_file = write_job(running.scratch / "literal", rounds=3, pipeline="literal")
    spec, code_dir = load_job(job_file)
    accuracies = []
    with start_literal(running.submitter, spec, code_dir, signing_key=running.key) as job:
        assert job.silos == SILOS
        model = job.initial_model()
        for r in range(1, spec.rounds + 1):
            updates = [job.train(silo, model, round=r) for silo in job.silos]
            model = job.aggregate(updates)
            evaluation = job.evaluate(model)
            assert set(evaluation) == set(SILOS)
            accuracies.append(
                sum(m["accuracy"] * m["num_samples"] for m in evaluation.values())
                / sum(m["num_samples"] for m in evaluation.values())
            )
        job.finish(model)
        job.save_model(running.scratch / "literal.safetensors")
    federated = load_parameters(running.scratch / "literal.safetensors")

    inputs = workspace_inputs(running.root, spec)
    with local_literal(spec, code_dir, inputs, work_root=running.scratch / "local") as local:
        m = local.initial_model()
        for r in range(1, spec.rounds + 1):
            m = local.aggregate([local.train(s, m, round=r) for s in local.silos])
        local.finish(m)
        local.save_model(running.scratch / "local.safetensors")
    in_process = load_parameters(running.scratch / "local.safetensors")
    gathered = simulate(
        JobSpec.model_validate({**spec.model_dump(mode="json"), "pipeline": "scatter_gather"}),
        code_dir,
        inputs,
        work_root=running.scratch / "sim",
    )
    for name, value in gathered.parameters.items():
        np.testing.assert_allclose(federated[name], value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(in_process[name], value, rtol=1e-5, atol=1e-6)
    assert accuracies[-1] > 0.5

    with OrchestratorClient(running.submitter) as client:
        info = client.job(job.job_id)
    assert info.state is JobState.SUCCEEDED and info.has_model
    assert [r.round for r in info.history] == [1, 2, 3]
    assert all(set(r.train) == set(SILOS) and set(r.evaluate) == set(SILOS) for r in info.history)


def test_a_step_the_silos_did_not_approve_is_refused_and_the_job_goes_on(
    running: Federation,
) -> None:
    job_file = write_job(running.scratch / "literal-rules", rounds=1, pipeline="literal")
    spec, code_dir = load_job(job_file)
    with start_literal(running.submitter, spec, code_dir, signing_key=running.key) as job:
        model = job.initial_model()
        with pytest.raises(FedsiloError, match=r"outside the job's rounds 1\.\.1"):
            job.train("silo-a", model, round=2)
        with pytest.raises(FedsiloError, match="silo 'silo-z' is not in job"):
            job.train("silo-z", model, round=1)
        model = job.aggregate([job.train(s, model, round=1) for s in job.silos])
        job.finish(model)


def test_an_exception_in_the_loop_cancels_the_job(running: Federation) -> None:
    job_file = write_job(
        running.scratch / "literal-fail",
        rounds=2,
        pipeline="literal",
        extra=", extra: {sleep: 0}",
    )
    (running.scratch / "literal-fail" / "task" / "task.py").write_text(
        (running.scratch / "literal-fail" / "task" / "task.py")
        .read_text()
        .replace(
            "def train(model, ctx):\n", "def train(model, ctx):\n    raise ValueError('boom')\n"
        )
    )
    spec, code_dir = load_job(job_file)
    with (
        pytest.raises((TaskFailed, JobFailed), match="the task code raised ValueError"),
        start_literal(running.submitter, spec, code_dir, signing_key=running.key) as job,
    ):
        model = job.initial_model()
        job.aggregate([job.train(s, model, round=1) for s in job.silos])
    with OrchestratorClient(running.submitter) as client:
        info = client.wait(job.job_id, timeout=60)
    assert info.state is JobState.FAILED
    assert "ValueError (error e-" in (info.error or "")
    assert "boom" not in (info.error or "")  # the message stays in the silo
