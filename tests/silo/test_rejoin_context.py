"""An agent that takes a job up again after a restart holds the job's context to its task.

The context comes from the orchestrator (the rounds' tasks carry none); a task that names
another bundle than the job's context is refused by name before anything runs.
"""

from __future__ import annotations

import uuid

import pytest

from fedsilo.api._messages import FitTask, JobContext
from fedsilo.audit import audit_path, read_log
from fedsilo.errors import FedsiloError, PolicyRejected
from fedsilo.privacy import PrivacySpec
from fedsilo.silo._agent import Agent
from fedsilo.silo._session import JobSession


def _context(bundle: str, privacy: PrivacySpec | None = None) -> JobContext:
    return JobContext(
        job_name="digits",
        bundle_digest=bundle,
        entrypoint="task",
        author="alice",
        rounds=3,
        privacy=privacy or PrivacySpec(),
    )


def _fit(bundle: str) -> FitTask:
    return FitTask(
        task_id=uuid.uuid4().hex,
        job_id="job-1",
        round=2,
        bundle_digest=bundle,
        params_digest="c" * 64,
    )


def test_a_task_of_another_bundle_than_the_jobs_is_refused(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def job_context(job_id: str) -> JobContext:
        asked.append(job_id)
        return _context("a" * 64)

    monkeypatch.setattr(agent.work, "job_context", job_context)
    agent._sessions["job-1"] = JobSession("job-1", agent.storage / "jobs" / "job-1")
    with pytest.raises(PolicyRejected, match="bundle"):
        agent._dispatch(_fit("b" * 64), agent._sessions["job-1"])
    assert asked == ["job-1"]
    refused = [e.data for e in read_log(audit_path(agent.storage)) if e.event == "job.refused"]
    assert refused[-1]["rule"] == "bundle-digest" and refused[-1]["job_name"] == "digits"


def test_a_secure_job_is_not_taken_up_again(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    secure = PrivacySpec.model_validate({"secure_aggregation": {}})
    monkeypatch.setattr(agent.work, "job_context", lambda _job: _context("a" * 64, secure))
    agent._sessions["job-1"] = JobSession("job-1", agent.storage / "jobs" / "job-1")
    with pytest.raises(FedsiloError, match="sends no update in the clear"):
        agent._dispatch(_fit("a" * 64), agent._sessions["job-1"])
