"""A silo's agent under secure aggregation, played against a dishonest orchestrator.

The agent runs in this process from a real silo kit; the tasks a compromised orchestrator
could send are handed to it directly. The silo must never upload an update in the clear,
never take its masking settings from the task, and never reveal both secrets of a party.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.api import TaskKind, TaskResult
from fedsilo.api._messages import JobTask, PingTask, parse_task
from fedsilo.audit import audit_path, read_log
from fedsilo.config import Classification, open_workspace
from fedsilo.errors import FedsiloError, PolicyRejected
from fedsilo.privacy import PrivacySpec
from fedsilo.privacy.secagg import (
    AdvertiseKeys,
    SecAggClient,
    SecAggServer,
    UnmaskRequest,
    parse_message,
)
from fedsilo.silo._agent import Agent
from fedsilo.silo._governance import Clearance
from fedsilo.silo._session import JobSession

SILOS = ("silo-a", "silo-b", "silo-c")
SECURE = PrivacySpec.model_validate({"secure_aggregation": {}})


def _clear(agent: Agent, job_id: str, privacy: PrivacySpec, rounds: int = 2) -> None:
    outputs = {"model": Classification.INTERMEDIATE, "metrics": Classification.INTERMEDIATE}
    agent._sessions[job_id] = JobSession(
        job_id,
        agent.storage / "jobs" / job_id,
        clearance=Clearance(
            job_id, "request", "rule", "policy", outputs, privacy=privacy, rounds=rounds
        ),
    )


def _dispatch(agent: Agent, task: JobTask) -> TaskResult:
    return agent._dispatch(task, agent._sessions[task.job_id])


def _task(job_id: str, kind: TaskKind, **fields: Any) -> JobTask:
    if kind is TaskKind.FIT:
        fields = {"bundle_digest": "a" * 64, **fields}
    task = parse_task(
        json.dumps({"task_id": uuid.uuid4().hex, "kind": kind.value, "job_id": job_id, **fields})
    )
    assert not isinstance(task, PingTask)
    return task


def _refusals(agent: Agent) -> list[dict[str, object]]:
    return [e.data for e in read_log(audit_path(agent.storage)) if e.event == "job.refused"]


def test_no_update_leaves_a_secure_job_before_its_masks_are_set_up(agent: Agent) -> None:
    _clear(agent, "job-1", SECURE)
    # the orchestrator skips the setup and asks for a round, even claiming no privacy
    fit = _task("job-1", TaskKind.FIT, round=1, params_digest="0" * 64)
    with pytest.raises(FedsiloError, match="sends no update in the clear"):
        _dispatch(agent, fit)


def test_a_silo_sets_up_secure_aggregation_only_for_a_job_it_approved_with_it(
    agent: Agent,
) -> None:
    _clear(agent, "job-2", PrivacySpec())
    with pytest.raises(PolicyRejected, match="approved no secure aggregation"):
        _dispatch(agent, _task("job-2", TaskKind.SECAGG))
    assert _refusals(agent)[-1]["rule"] == "secure-aggregation"


def test_the_party_is_built_from_what_the_silo_approved(agent: Agent) -> None:
    _clear(agent, "job-3", SECURE, rounds=5)
    result = _dispatch(agent, _task("job-3", TaskKind.SECAGG))
    (text,) = result.secagg
    message = parse_message(text)
    assert isinstance(message, AdvertiseKeys) and message.sender == "silo-a"
    assert len(message.keys.s_public) == 5  # the approved rounds, not the task's


def test_a_second_setup_makes_new_keys_and_is_audited(agent: Agent) -> None:
    """After an orchestrator restart the job's masks are set up again, from new keys."""
    _clear(agent, "job-5", SECURE)
    (first,) = _dispatch(agent, _task("job-5", TaskKind.SECAGG)).secagg
    (second,) = _dispatch(agent, _task("job-5", TaskKind.SECAGG)).secagg
    a, b = parse_message(first), parse_message(second)
    assert isinstance(a, AdvertiseKeys) and isinstance(b, AdvertiseKeys)
    assert a.keys.c_public != b.keys.c_public and a.keys.s_public != b.keys.s_public
    setups = [e.data for e in read_log(audit_path(agent.storage)) if e.event == "secagg.setup"]
    assert [s.get("again", False) for s in setups] == [False, True]


def test_a_request_for_both_secrets_of_a_party_is_refused_and_audited(agent: Agent) -> None:
    job = "job-4"
    _clear(agent, job, SECURE)
    server = SecAggServer(SILOS, job_id=job, rounds=2)
    others = {s: SecAggClient(s, job_id=job, rounds=2) for s in SILOS[1:]}
    (ad,) = _dispatch(agent, _task(job, TaskKind.SECAGG)).secagg
    rosters = [m for c in others.values() for m in server.feed(c.advertise())]
    rosters += server.feed(parse_message(ad))
    deliveries = []
    for roster in rosters:
        if roster.recipient == "silo-a":
            replies = _dispatch(
                agent, _task(job, TaskKind.SECAGG, secagg=roster.model_dump_json())
            ).secagg
            bundles = [parse_message(t) for t in replies]
        else:
            bundles = list(others[roster.recipient].feed(roster))
        for bundle in bundles:
            deliveries += server.feed(bundle)
    for delivery in deliveries:
        if delivery.recipient == "silo-a":
            _dispatch(agent, _task(job, TaskKind.SECAGG, secagg=delivery.model_dump_json()))
        else:
            others[delivery.recipient].feed(delivery)
    party = agent._sessions[job].secagg
    assert party is not None and party.ready
    party.masked_input(1, {"w": np.zeros(3)}, 1.0)
    # first it reveals silo-b's self-mask seed (b: silo-b survived) ...
    honest = UnmaskRequest(job_id=job, recipient="silo-a", round=1, survivors=SILOS, dropped=())
    _dispatch(agent, _task(job, TaskKind.SECAGG, secagg=honest.model_dump_json()))
    # ... then a dishonest orchestrator claims silo-b dropped, to get its s key too
    greedy = UnmaskRequest(
        job_id=job,
        recipient="silo-a",
        round=1,
        survivors=("silo-a", "silo-c"),
        dropped=("silo-b",),
    )
    with pytest.raises(PolicyRejected, match="would expose its input"):
        _dispatch(agent, _task(job, TaskKind.SECAGG, secagg=greedy.model_dump_json()))
    assert _refusals(agent)[-1]["rule"] == "secure-aggregation"


def test_a_round_it_helped_unmask_is_never_sent_again(agent: Agent, tmp_path: Path) -> None:
    """A new setup (the orchestrator restarted, or claims it did) gets no second update of
    a round whose sum the silo already helped unmask: with other silos missing, the two
    sums would differ by their updates. The record outlives the agent."""
    job = "job-6"
    _clear(agent, job, SECURE)
    _dispatch(agent, _task(job, TaskKind.SECAGG))
    request = UnmaskRequest(job_id=job, recipient="silo-a", round=1, survivors=SILOS, dropped=())
    with pytest.raises(PolicyRejected):  # the party has no round 1 input: refused, but
        _dispatch(agent, _task(job, TaskKind.SECAGG, secagg=request.model_dump_json()))
    # ... the silo recorded that it answered round 1's unmasking before anything left
    _dispatch(agent, _task(job, TaskKind.SECAGG))  # set up again
    fit = _task(job, TaskKind.FIT, round=1, params_digest="0" * 64)
    with pytest.raises(FedsiloError, match="round 1 of job job-6 was already unmasked"):
        _dispatch(agent, fit)
    refused = [e.data for e in read_log(audit_path(agent.storage)) if e.event == "secagg.refused"]
    assert refused[-1]["round"] == 1
    again = Agent(open_workspace(tmp_path / "ws").kit("silo-a"))
    try:
        _clear(again, job, SECURE)
        _dispatch(again, _task(job, TaskKind.SECAGG))
        with pytest.raises(FedsiloError, match="already unmasked"):
            _dispatch(again, _task(job, TaskKind.FIT, round=1, params_digest="0" * 64))
        assert again.secure.party(again._sessions[job], 2) is not None  # round 2 goes on
    finally:
        again.close()
