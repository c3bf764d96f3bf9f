"""A running literal pipeline answers 404 for a step or a silo it does not have.

The job exists and runs (a whole federation is up: orchestrator, three silos' agents and
approval endpoints); only the step or the silo named is missing. Each is named in the
404, and the job goes on to finish.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.jobs import load_job
from fedsilo.pipelines import start_literal
from fedsilo.runtime import down, up
from tests.fuzz.conftest import identity
from tests.integration.conftest import make_federation, write_job

pytestmark = pytest.mark.integration


def test_a_running_job_answers_404_for_a_step_or_a_silo_it_does_not_have(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "steps")
    up(fed.root)
    try:
        spec, code_dir = load_job(write_job(fed.scratch / "literal", rounds=1, pipeline="literal"))
        alice = identity(fed.submitter)
        url = fed.submitter.orchestrator_url
        with start_literal(fed.submitter, spec, code_dir, signing_key=fed.key) as job:
            model = job.initial_model()
            base = f"{url}/v1/jobs/{job.job_id}"
            for method, path, body, named in [
                ("GET", "/steps/no-such-step", None, "no-such-step"),
                ("POST", "/aggregate", {"steps": ["no-such-step"], "round": 1}, "no-such-step"),
                (
                    "POST",
                    "/steps",
                    {"kind": "train", "silo": "silo-z", "model": model.digest, "round": 1},
                    "silo-z",
                ),
            ]:
                answer = alice.request(method, base + path, json=body, timeout=30)
                assert answer.status_code == 404, answer.text
                error = answer.json()["error"]
                assert named in error and job.job_id in error, error
            job.finish(job.aggregate([job.train(s, model, round=1) for s in job.silos]))
    finally:
        down(fed.root)
