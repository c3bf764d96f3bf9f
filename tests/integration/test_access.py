"""Who may do what, tried through the real processes with every identity of a federation.

Submitters alice, bob and dave (dave also administers the federation), carol who only
administers it, and the silos' own kits. alice's job runs in both silos and is shared
with bob; dave's runs in silo-a alone and is shared with no one. Every route of the
orchestrator is called by every identity: each answer is the one the rules say (written
out here from the rules themselves, not read from the orchestrator's table), and each
refusal is a line of the orchestrator's audit log.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient, client_ssl_context
from fedsilo.audit import audit_path, read_log
from fedsilo.config import Classification, Kit, Workspace, open_workspace
from fedsilo.jobs import load_job, load_private_key
from fedsilo.orchestrator._access import ROUTES
from fedsilo.provisioning import provision
from fedsilo.quickstart._quickstart import _split_digits
from fedsilo.runtime import down, up
from fedsilo.storage import add_dataset
from tests.integration.conftest import free_port, write_job

pytestmark = pytest.mark.integration

SILOS = ("silo-a", "silo-b")
SUBMITTERS = ("alice", "bob", "dave")
ADMINS = ("carol", "dave")
PEOPLE = ("alice", "bob", "carol", "dave", "silo-a", "silo-b")


@dataclass
class World:
    ws: Workspace
    alice_job: str  # both silos, shared with bob, finished
    dave_job: str  # silo-a only, shared with no one, finished

    def kit(self, name: str) -> Kit:
        return self.ws.kit(name)


def _spec(folder: Path) -> Path:
    silos = "".join(
        f"  - name: {s}\n    storage: {{root: storage/{s}}}\n    compute: {{name: {s}-cpu}}\n"
        for s in SILOS
    )
    spec = folder / "access.yaml"
    spec.write_text(
        f"name: access\norchestrator:\n  host: 127.0.0.1\n  port: {free_port()}\n"
        "  storage: {root: storage/orchestrator}\n  compute: {name: orchestrator-cpu}\n"
        f"silos:\n{silos}submitters: [{', '.join(SUBMITTERS)}]\n"
        f"admins: [{', '.join(ADMINS)}]\n"
    )
    return spec


def _submit(ws: Workspace, who: str, folder: Path, **overrides: str) -> str:
    job_file = write_job(folder, rounds=1, **{"silos": f"[{', '.join(SILOS)}]", **overrides})
    spec, code = load_job(job_file)
    kit = ws.kit(who)
    with OrchestratorClient(kit) as client:
        return client.submit(spec, code, signing_key=load_private_key(kit.signing_key_file))


def _finish(ws: Workspace, who: str, job_id: str) -> JobInfo:
    with OrchestratorClient(ws.kit(who)) as client:
        info = client.wait(job_id, timeout=240)
    assert info.state is JobState.SUCCEEDED, info.error
    return info


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("access")
    root = tmp / "fed"
    provision(_spec(tmp), root)
    ws = open_workspace(root)
    shards = _split_digits(tmp / "data")
    for silo, shard in zip(SILOS, ("silo-a", "silo-b"), strict=True):
        for role in ("train", "test"):
            add_dataset(
                ws.kit(silo), f"digits-{role}", shards[shard][role], Classification.SENSITIVE
            )
    up(root)
    try:
        alice_job = _submit(
            ws, "alice", tmp / "alice", silos="[silo-a, silo-b]", share_with="[bob]"
        )
        dave_job = _submit(ws, "dave", tmp / "dave", silos="[silo-a]")
        _finish(ws, "alice", alice_job)
        _finish(ws, "dave", dave_job)
        yield World(ws, alice_job, dave_job)
    finally:
        down(root)


# -- the rules, as the issue states them ------------------------------------------------------


def _job_of(world: World, job_id: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """owner, readers, silos."""
    if job_id == world.alice_job:
        return "alice", ("bob",), SILOS
    return "dave", (), ("silo-a",)


def expected(route: str, who: str, world: World, job_id: str | None) -> str:
    """``ok``, ``403`` or ``404`` (a job that is not the caller's: as if it did not exist)."""
    path = route.split(" ", 1)[1]
    submitter, admin, silo = who in SUBMITTERS, who in ADMINS, who in SILOS
    if path.startswith("/v1/agent/"):
        if not silo:
            return "403"
        if job_id is None:
            return "ok"
        return "ok" if who in _job_of(world, job_id)[2] else "404"
    if route in ("PUT /v1/uploads/{digest}", "POST /v1/jobs"):
        return "ok" if submitter else "403"
    if route in ("GET /v1/whoami", "GET /v1/jobs", "GET /v1/status"):
        return "ok"
    if route == "POST /v1/check":
        return "ok" if submitter or admin else "403"
    if path.startswith("/v1/members"):  # the federation's members: its administrator's
        return "ok" if admin else "403"
    assert job_id is not None, route
    owner, readers, silos = _job_of(world, job_id)
    is_owner = submitter and who == owner
    is_reader = submitter and who in readers
    sees = is_owner or is_reader or admin or (silo and who in silos)
    if route == "GET /v1/jobs/{job_id}":
        return "ok" if sees else ("403" if not (submitter or silo or admin) else "404")
    if route == "POST /v1/jobs/{job_id}/cancel":
        if is_owner or admin:
            return "ok"
        if not submitter:  # a silo may not cancel, whatever the job
            return "403"
        return "403" if sees else "404"
    if route == "GET /v1/jobs/{job_id}/model":
        if is_owner or is_reader:
            return "ok"
        if not submitter:
            return "403"
        return "403" if sees else "404"
    # the literal pipeline's routes: its owner alone
    if is_owner:
        return "ok"
    if not submitter:
        return "403"
    return "403" if sees else "404"


def _call(world: World, who: str, route: str, job_id: str | None) -> httpx.Response:
    method, template = route.split(" ", 1)
    path = template.format(
        job_id=job_id or "",
        task_id=uuid.uuid4().hex,
        digest="0" * 64,
        step_id="s1",
        member="nobody",  # no such member: an administrator's call changes nothing
    )
    kit = world.kit(who)
    body: object = {}
    params: dict[str, object] = {}
    if route == "POST /v1/jobs/{job_id}/steps":
        body = {"kind": "train", "silo": "silo-a", "round": 1, "model": "0" * 64}
    elif route == "POST /v1/jobs/{job_id}/aggregate":
        body = {"steps": ["s1"], "round": 1}
    elif route == "POST /v1/jobs/{job_id}/finish":
        body = {"model": "0" * 64}
    elif route == "GET /v1/agent/task":
        params = {"wait": 0}
    elif route == "POST /v1/check":
        params = {"timeout": 5}
    elif route.startswith("PUT"):
        body = None
    with httpx.Client(
        base_url=kit.orchestrator_url, verify=client_ssl_context(kit), timeout=30
    ) as http:
        if body is None:
            return http.request(method, path, content=b"not what the digest says")
        if method == "GET":
            return http.request(method, path, params=params)
        return http.request(method, path, json=body, params=params)


def _seen(response: httpx.Response, job_id: str | None) -> str:
    if response.status_code == 403:
        return "403"
    hidden = response.status_code == 404 and job_id is not None
    if hidden and response.json().get("error") == f"no job '{job_id}'":
        return "404"
    return "ok"


def _cases(world: World) -> list[tuple[str, str | None]]:
    cases: list[tuple[str, str | None]] = []
    for route in ROUTES:
        if "{job_id}" in route:
            cases += [(route, world.alice_job), (route, world.dave_job)]
        else:
            cases.append((route, None))
    return cases


def test_every_route_answers_every_identity_as_the_rules_say(world: World) -> None:
    orchestrator = world.kit("orchestrator")
    before = len(read_log(audit_path(orchestrator.storage_path)))
    wrong: list[str] = []
    refused: list[tuple[str, str]] = []
    seen_kinds: list[str] = []
    for route, job_id in _cases(world):
        for who in PEOPLE:
            if route == "GET /v1/agent/task" and who in SILOS:
                continue  # would take a task from the silo's own agent; its role is checked below
            want = expected(route, who, world, job_id)
            response = _call(world, who, route, job_id)
            got = _seen(response, job_id)
            seen_kinds.append(got)
            if got != want:
                wrong.append(
                    f"{who} {route} ({job_id}): wanted {want}, got {response.status_code} "
                    f"{response.text[:200]}"
                )
            if got != "ok":
                refused.append((who, route.split(" ", 1)[0]))
                body = response.json()
                if got == "403":
                    assert "needs" in body["error"] or "not a participant" in body["error"], body
    assert not wrong, "\n".join(wrong)
    assert seen_kinds.count("403") >= 20 and seen_kinds.count("404") >= 10  # the matrix bites
    lines = [
        e
        for e in read_log(audit_path(orchestrator.storage_path))[before:]
        if e.event == "request.refused"
    ]
    assert len(lines) == len(refused)
    assert sorted((str(e.data["caller"]), str(e.data["method"])) for e in lines) == sorted(refused)


def test_a_silo_may_poll_for_tasks_and_others_may_not(world: World) -> None:
    for who in PEOPLE:
        response = _call(world, who, "GET /v1/agent/task", None)
        assert response.status_code == (204 if who in SILOS else 403), (who, response.text)


def test_each_list_shows_what_its_caller_may_see(world: World) -> None:
    def listed(who: str) -> dict[str, JobInfo]:
        with OrchestratorClient(world.kit(who)) as client:
            return {j.id: j for j in client.jobs()}

    alice, dave = world.alice_job, world.dave_job
    assert set(listed("alice")) == {alice}
    assert set(listed("bob")) == {alice}  # shared with bob
    assert set(listed("dave")) == {alice, dave}  # dave administers the federation
    assert set(listed("carol")) == {alice, dave}
    assert set(listed("silo-a")) == {alice, dave}
    assert set(listed("silo-b")) == {alice}  # dave's job never ran in silo-b
    assert listed("bob")[alice].shared_with == ["bob"]
    assert listed("silo-b")[alice].outputs == {"model": "intermediate", "metrics": "intermediate"}
    assert listed("carol")[dave].view == "summary"
    assert listed("dave")[dave].view == "full"


def test_the_administrator_and_a_silo_see_who_took_part_but_no_metric_values(
    world: World,
) -> None:
    with OrchestratorClient(world.kit("alice")) as client:
        full = client.job(world.alice_job)
    assert full.view == "full"
    assert full.history[-1].evaluate["silo-a"]["accuracy"] >= 0
    for who in ("carol", "silo-b"):
        with OrchestratorClient(world.kit(who)) as client:
            info = client.job(world.alice_job)
        assert info.view == "summary"
        last = info.history[-1]
        assert set(last.evaluate) == set(SILOS)
        assert all(metrics == {} for metrics in [*last.evaluate.values(), *last.train.values()])
        assert last.evaluate_aggregate == {}
        text = info.model_dump_json()
        assert "accuracy" not in text and "loss" not in text


def test_status_shows_a_silo_only_itself_and_everyone_the_members(world: World) -> None:
    with OrchestratorClient(world.kit("silo-b")) as client:
        report = client.status()
    assert [s.name for s in report.silos] == ["silo-b"]
    assert [j.id for j in report.jobs] == [world.alice_job]
    assert report.you is not None and report.you.roles == ["silo"]
    roles = {m.name: m.roles for m in report.members}
    assert roles["dave"] == ["admin", "submitter"]
    assert roles["carol"] == ["admin"]
    assert roles["alice"] == ["submitter"]
    with OrchestratorClient(world.kit("carol")) as client:
        assert [s.name for s in client.status().silos] == list(SILOS)


def test_the_silos_saw_who_reads_the_results_before_they_approved(world: World) -> None:
    for silo in SILOS:
        asked = [
            e.data
            for e in read_log(audit_path(world.kit(silo).storage_path))
            if e.event == "approval.requested" and e.data["job_id"] == world.alice_job
        ]
        assert asked and asked[0]["readers"] == ["bob"], silo


def test_sharing_with_someone_who_is_not_a_submitter_is_refused_naming_the_field(
    world: World, tmp_path: Path
) -> None:
    kit = world.kit("alice")
    with (
        OrchestratorClient(kit) as client,
        pytest.raises(Exception, match=r"share_with names 'carol', who is not a submitter"),
    ):
        spec, code = load_job(
            write_job(tmp_path, rounds=1, silos="[silo-a, silo-b]", share_with="[carol]")
        )
        client.submit(spec, code, signing_key=load_private_key(kit.signing_key_file))


def test_the_administrator_cancels_a_job_it_did_not_submit(world: World, tmp_path: Path) -> None:
    job_id = _submit(world.ws, "bob", tmp_path, extra=", extra: {sleep: 30}")
    deadline = time.monotonic() + 60
    with OrchestratorClient(world.kit("bob")) as bob:
        while bob.job(job_id).state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.2)
        with OrchestratorClient(world.kit("carol")) as carol:
            assert carol.cancel(job_id) is True
        info = bob.wait(job_id, timeout=60)
    assert info.state is JobState.CANCELLED
    assert info.error == "cancelled by carol"
    entries = read_log(audit_path(world.kit("orchestrator").storage_path))
    assert any(
        e.event == "job.cancel" and e.data == {"job": job_id, "caller": "carol"} for e in entries
    )
    # and carol, who submits nothing, may not submit
    response = _call(world, "carol", "POST /v1/jobs", None)
    assert response.status_code == 403
    assert json.loads(response.text)["error"].startswith("'carol' (admin) may not")
