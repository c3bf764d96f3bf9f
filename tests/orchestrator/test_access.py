"""The access table: every route of the orchestrator has its row, and the rows decide."""

from __future__ import annotations

from pathlib import Path

from fastapi.routing import APIRoute

from fedsilo.config import Role, open_workspace
from fedsilo.orchestrator._access import ROUTES, Caller, Grant, JobAccess, View, decide
from fedsilo.orchestrator._server import build
from fedsilo.provisioning import provision

ALICE = Caller("alice", frozenset({Role.SUBMITTER}))
BOB = Caller("bob", frozenset({Role.SUBMITTER}))
CAROL = Caller("carol", frozenset({Role.ADMIN}))
SILO_B = Caller("silo-b", frozenset({Role.SILO}))
JOB = JobAccess(owner="alice", readers=(), silos=("silo-a",))


def test_every_route_of_the_app_has_exactly_one_row(tmp_path: Path) -> None:
    spec = tmp_path / "fed.yaml"
    spec.write_text(
        "name: t\norchestrator: {host: 127.0.0.1, port: 9443, storage: {root: o}, "
        "compute: {name: o-cpu}}\nsilos:\n  - {name: silo-a, storage: {root: a}, "
        "compute: {name: a-cpu}}\nsubmitters: [alice]\nadmins: [carol]\n"
    )
    ws = provision(spec, tmp_path / "ws")
    app, _engine = build(open_workspace(ws.root).kit("orchestrator"))
    routes = {
        f"{method} {route.path}"
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert routes == set(ROUTES)


def test_a_route_without_a_row_is_refused() -> None:
    assert decide("DELETE /v1/jobs/{job_id}", CAROL, JOB, "j1").status == 403


def test_a_job_that_is_not_yours_answers_as_one_that_does_not_exist() -> None:
    hidden = decide("GET /v1/jobs/{job_id}", BOB, JOB, "j1")
    missing = decide("GET /v1/jobs/{job_id}", BOB, None, "j1")
    assert (
        (hidden.status, hidden.reason) == (missing.status, missing.reason) == (404, "no job 'j1'")
    )
    assert "'bob' (submitter)" in hidden.audited  # the audit log says why
    assert decide("GET /v1/jobs/{job_id}", SILO_B, JOB, "j1").status == 404


def test_sharing_lets_a_reader_read_but_not_control() -> None:
    shared = JobAccess(owner="alice", readers=("bob",), silos=("silo-a",))
    assert decide("GET /v1/jobs/{job_id}/model", BOB, shared, "j1").allowed
    cancel = decide("POST /v1/jobs/{job_id}/cancel", BOB, shared, "j1")
    assert cancel.status == 403 and "the job's owner or the federation's administrator" in (
        cancel.reason
    )
    everyone = JobAccess(owner="alice", readers=("*",), silos=("silo-a",))
    assert decide("GET /v1/jobs/{job_id}", BOB, everyone, "j1").view is View.FULL


def test_the_administrator_sees_a_summary_and_no_model() -> None:
    assert decide("GET /v1/jobs/{job_id}", CAROL, JOB, "j1").view is View.SUMMARY
    refused = decide("GET /v1/jobs/{job_id}/model", CAROL, JOB, "j1")
    assert refused.status == 403 and refused.reason.startswith("'carol' (admin) may not")
    assert decide("POST /v1/jobs", CAROL, None, None).status == 403
    both = Caller("dave", frozenset({Role.SUBMITTER, Role.ADMIN}))
    assert JOB.grants(both) == {Grant.ADMIN}
    assert decide("POST /v1/jobs", both, None, None).allowed


def test_a_stored_spec_that_cannot_be_read_shares_with_no_one() -> None:
    assert JobAccess.of("alice", "not json") == JobAccess("alice", (), ())
    assert JobAccess.of("alice", '{"share_with": 3, "silos": ["a"]}').silos == ("a",)


def test_the_docs_list_every_route_of_the_table() -> None:
    text = (Path(__file__).parents[2] / "docs" / "access.md").read_text(encoding="utf-8")
    table = text.split("## The table", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert documented == set(ROUTES)
