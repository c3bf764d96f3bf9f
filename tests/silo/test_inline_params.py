"""A global model sent inside its task: used only if it is the model the task names."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from fedsilo.api._messages import INLINE_PARAMS_MAX, EvaluateTask, FitTask
from fedsilo.errors import FedsiloError
from fedsilo.silo._agent import Agent
from fedsilo.silo._session import JobSession

MODEL = b"a small model's safetensors file"


def _session(agent: Agent) -> JobSession:
    session = JobSession("job-1", agent.storage / "jobs" / "job-1")
    session.params.mkdir(parents=True)
    return session


def _no_download(*_: object) -> None:
    raise AssertionError("a model sent with its task is not downloaded")


def test_a_model_sent_with_its_task_is_used_without_a_download(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.work, "download_params", _no_download)
    digest = hashlib.sha256(MODEL).hexdigest()
    task = EvaluateTask(
        task_id=uuid.uuid4().hex,
        job_id="job-1",
        round=1,
        bundle_digest="b" * 64,
        params_digest=digest,
        params=MODEL,
    )
    path = agent.steps._global(task, _session(agent))
    assert path.read_bytes() == MODEL and digest in path.name


def test_a_model_sent_with_its_task_under_another_digest_is_refused(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.work, "download_params", _no_download)
    task = FitTask(
        task_id=uuid.uuid4().hex,
        job_id="job-1",
        round=2,
        bundle_digest="b" * 64,
        params_digest="c" * 64,
        params=MODEL,
    )
    session = _session(agent)
    with pytest.raises(FedsiloError, match=r"not the c{64} it names"):
        agent.steps._global(task, session)
    assert list(Path(session.params).iterdir()) == []  # nothing of it kept


def test_a_task_cannot_carry_a_model_past_the_inline_bound() -> None:
    with pytest.raises(ValueError, match="at most"):
        FitTask(
            task_id=uuid.uuid4().hex,
            job_id="job-1",
            round=1,
            bundle_digest="b" * 64,
            params_digest="c" * 64,
            params=b"\0" * (INLINE_PARAMS_MAX + 1),
        )
