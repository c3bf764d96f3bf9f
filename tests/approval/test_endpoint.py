"""The approval endpoint and its clients over real HTTPS with mutual TLS on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from fedsilo.approval import (
    ENDPOINT_RULE,
    WAIT_RULE,
    AdminClient,
    ApprovalAnswer,
    ApprovalClient,
    Decision,
    QueueState,
    SigningStatus,
)
from fedsilo.audit import read_log
from fedsilo.config import Kit
from fedsilo.errors import CertificateRefused, FedsiloError, TransportError
from tests.approval.conftest import (
    SILO,
    Authority,
    Endpoint,
    free_port,
    kit_with_identity,
    make_request,
    running,
)

HELD = {"job_name": "needs-a-person"}


def ask(kit: Kit, **changes: object) -> ApprovalAnswer:
    with ApprovalClient(kit) as client:
        return client.ask(make_request(**changes))


def test_the_policy_approves_and_rejects_at_once(endpoint: Endpoint) -> None:
    approved = ask(endpoint.kit)
    assert (approved.decision, approved.rule, approved.decided_by) == (
        Decision.APPROVE,
        "everything-else",
        "policy",
    )
    rejected = ask(endpoint.kit, job_id="job-2", signing=SigningStatus.UNSIGNED)
    assert (rejected.decision, rejected.rule) == (Decision.REJECT, "code-must-be-signed")
    assert "unsigned" in rejected.reason
    decided = endpoint.events.named("approval.decided")
    assert [d["decision"] for d in decided] == ["approve", "reject"]
    assert [r["job_id"] for r in endpoint.events.named("approval.requested")] == ["job-1", "job-2"]


def test_a_held_job_waits_for_the_admin_and_then_runs(endpoint: Endpoint) -> None:
    held = ask(endpoint.kit, **HELD)
    assert (held.decision, held.rule) == (Decision.MANUAL, "a-person-decides")
    with ApprovalClient(endpoint.kit) as client:
        assert client.state(held.request_id).decision is Decision.MANUAL
        with AdminClient(endpoint.kit) as admin:
            listed = admin.list()
            assert [e.request_id for e in listed] == [held.request_id]
            assert listed[0].request.job_name == "needs-a-person"
            answer = admin.approve(held.request_id, reason="looked at the code")
        assert (answer.decision, answer.decided_by) == (Decision.APPROVE, f"{SILO}-admin")
        assert answer.reason == "looked at the code"
        # the held rule's expires_after_hours (2) applies when the admin sets none
        assert answer.expires_at == pytest.approx(endpoint.clock.now + 2 * 3600)
        now = client.state(held.request_id)
        assert (now.decision, now.decided_by) == (Decision.APPROVE, f"{SILO}-admin")
        # the same job asked again gets the stored decision, not a new hold
        again = client.ask(make_request(**HELD))
        assert (again.request_id, again.decision) == (held.request_id, Decision.APPROVE)
    people = [d for d in endpoint.events.named("approval.decided") if d["decided_by"] != "policy"]
    assert people == [
        {
            "request_id": held.request_id,
            "job_id": "job-1",
            "decision": "approve",
            "rule": "a-person-decides",
            "reason": "looked at the code",
            "decided_by": f"{SILO}-admin",
        }
    ]


def test_asking_again_while_held_does_not_queue_twice(endpoint: Endpoint) -> None:
    first, second = ask(endpoint.kit, **HELD), ask(endpoint.kit, **HELD)
    assert first.request_id == second.request_id
    changed = ask(endpoint.kit, **HELD, bundle_digest="c" * 64)
    assert changed.request_id != first.request_id  # other code: a person has not seen it
    with AdminClient(endpoint.kit) as admin:
        assert len(admin.list()) == 2


def test_a_rejected_job_stays_rejected(endpoint: Endpoint) -> None:
    held = ask(endpoint.kit, **HELD)
    with AdminClient(endpoint.kit) as admin:
        answer = admin.reject(held.request_id, reason="reads too much")
        assert answer.decision is Decision.REJECT
        assert admin.list() == []
        assert [e.state for e in admin.list(QueueState.REJECTED)] == [QueueState.REJECTED]
        with pytest.raises(FedsiloError, match="already rejected"):
            admin.approve(held.request_id)
    again = ask(endpoint.kit, **HELD)
    assert (again.decision, again.reason) == (Decision.REJECT, "reads too much")


def test_an_approval_expires_and_the_job_is_held_again(endpoint: Endpoint) -> None:
    held = ask(endpoint.kit, **HELD)
    with AdminClient(endpoint.kit) as admin:
        admin.approve(held.request_id, expires_in_hours=0.001)
        endpoint.clock.now += 0.001 * 3600 + 1
        with ApprovalClient(endpoint.kit) as client:
            state = client.state(held.request_id)
            assert state.decision is Decision.MANUAL
            assert "expired" in state.reason
            assert client.ask(make_request(**HELD)).decision is Decision.MANUAL
        assert [e.request_id for e in admin.list()] == [held.request_id]


def test_wait_polls_until_a_person_decides(endpoint: Endpoint) -> None:
    held = ask(endpoint.kit, **HELD)
    seen: list[ApprovalAnswer] = []

    def decide_on_first_wait(answer: ApprovalAnswer) -> None:
        seen.append(answer)
        if len(seen) == 1:
            with AdminClient(endpoint.kit) as admin:
                admin.approve(held.request_id)

    with ApprovalClient(endpoint.kit) as client:
        answer = client.wait(held.request_id, poll=0.01, on_wait=decide_on_first_wait)
        assert answer.decision is Decision.APPROVE
        other = ask(endpoint.kit, **HELD, job_id="job-9")
        timed_out = client.wait(other.request_id, poll=0.01, timeout=0.05)
    assert seen and seen[0].decision is Decision.MANUAL
    assert (timed_out.decision, timed_out.rule) == (Decision.REJECT, WAIT_RULE)


def test_the_agent_certificate_cannot_decide(endpoint: Endpoint, tmp_path: Path) -> None:
    held = ask(endpoint.kit, **HELD)
    # an AdminClient built on a kit whose admin.crt is the agent's own certificate
    as_agent = kit_with_identity(endpoint.kit, tmp_path / "agent-as-admin", lambda c, k: None)
    (as_agent.kit_dir / "admin.crt").write_bytes(endpoint.kit.cert_file.read_bytes())
    (as_agent.kit_dir / "admin.key").write_bytes(endpoint.kit.key_file.read_bytes())
    with AdminClient(as_agent) as admin:
        with pytest.raises(CertificateRefused, match="403"):
            admin.approve(held.request_id)
        with pytest.raises(CertificateRefused, match="403"):
            admin.list()
    with ApprovalClient(endpoint.kit) as client:
        assert client.state(held.request_id).decision is Decision.MANUAL


def test_another_participant_is_refused(
    endpoint: Endpoint, authority: Authority, tmp_path: Path
) -> None:
    other = kit_with_identity(
        endpoint.kit, tmp_path / "other", lambda c, k: authority.issue("silo-b", c, k)
    )
    answer = ask(other)
    assert (answer.decision, answer.rule) == (Decision.REJECT, ENDPOINT_RULE)
    assert "403" in answer.reason
    assert endpoint.events.named("approval.refused")
    assert not endpoint.events.named("approval.requested")


def test_a_certificate_of_another_ca_is_refused(endpoint: Endpoint, tmp_path: Path) -> None:
    foreign = Authority("another federation")
    stranger = kit_with_identity(
        endpoint.kit, tmp_path / "stranger", lambda c, k: foreign.issue(SILO, c, k)
    )
    answer = ask(stranger)
    assert (answer.decision, answer.rule) == (Decision.REJECT, ENDPOINT_RULE)
    assert "closed the connection" in answer.reason
    assert not endpoint.events.lines


def test_a_request_for_another_silo_is_refused(endpoint: Endpoint) -> None:
    answer = ask(endpoint.kit, silo="silo-b")
    assert (answer.decision, answer.rule) == (Decision.REJECT, ENDPOINT_RULE)
    assert "decides for silo 'silo-a'" in answer.reason


def test_the_client_fails_closed_when_the_endpoint_is_down(silo_kit: Kit) -> None:
    answer = ask(silo_kit)
    assert (answer.decision, answer.rule) == (Decision.REJECT, ENDPOINT_RULE)
    assert f"127.0.0.1:{silo_kit.approval_port}" in answer.reason
    assert f"starts it with: fedsilo approval serve --kit {silo_kit.kit_dir}" in answer.reason
    with ApprovalClient(silo_kit) as client:
        assert client.state("anything").decision is Decision.REJECT
    with AdminClient(silo_kit) as admin, pytest.raises(TransportError, match="did not answer"):
        admin.list()


class _Garbage(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>surely not an approval</html>")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def garbage_server(silo_kit: Kit) -> Iterator[None]:
    assert silo_kit.approval_port is not None
    server = HTTPServer(("127.0.0.1", silo_kit.approval_port), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.usefixtures("garbage_server")
def test_the_client_fails_closed_on_a_plain_http_server(silo_kit: Kit) -> None:
    answer = ask(silo_kit)
    assert (answer.decision, answer.rule) == (Decision.REJECT, ENDPOINT_RULE)


async def _not_an_answer(scope: dict[str, object], receive: object, send: object) -> None:
    assert scope["type"] == "http"
    body = b'{"decision": "approve"}' if scope["path"] == "/v1/requests" else b"not json"
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


def test_the_client_fails_closed_on_a_malformed_answer(silo_kit: Kit) -> None:
    with running(silo_kit, _not_an_answer), ApprovalClient(silo_kit) as client:
        partial = client.ask(make_request())
        assert (partial.decision, partial.rule) == (Decision.REJECT, ENDPOINT_RULE)
        assert "not an approval answer" in partial.reason
        garbage = client.state("x")
        assert (garbage.decision, garbage.rule) == (Decision.REJECT, ENDPOINT_RULE)
        assert "not JSON" in garbage.reason


def test_requests_and_decisions_reach_the_silo_audit_log(silo_kit: Kit) -> None:
    from fedsilo.approval._server import build_app

    app = build_app(silo_kit)
    with running(silo_kit, app):
        ask(silo_kit)
    app.state.queue.close()
    events = [e.event for e in read_log(silo_kit.storage_path / "audit" / "audit.jsonl")]
    assert events == ["approval.requested", "approval.decided"]
    assert (silo_kit.storage_path / "approval" / "queue.db").exists()


def test_an_unused_port_is_free() -> None:
    assert 0 < free_port() < 65536


def test_the_cli_serves_the_endpoint_until_terminated(silo_kit: Kit) -> None:
    assert silo_kit.approval_port is not None
    command = [sys.executable, "-m", "fedsilo", "approval", "serve", "--kit", str(silo_kit.kit_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the endpoint did not start listening"
            try:
                socket.create_connection(("127.0.0.1", silo_kit.approval_port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        held = ask(silo_kit, **HELD)
        assert held.decision is Decision.MANUAL
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises SIGTERM
    assert "Shutting down" in output
    events = [e.event for e in read_log(silo_kit.storage_path / "audit" / "audit.jsonl")]
    assert events == ["approval.requested", "approval.decided"]


def test_a_renewed_agent_certificate_is_taken_and_the_running_agent_kept(
    endpoint: Endpoint, authority: Authority, tmp_path: Path
) -> None:
    """The silo's kit gets a new certificate while its agent runs on the old one: both are
    let in until the agent calls with the new one; from then on the old one is refused."""
    old = kit_with_identity(endpoint.kit, tmp_path / "old", lambda c, k: None)  # a copy
    authority.issue(SILO, endpoint.kit.cert_file, endpoint.kit.key_file)  # the renewal
    renewed = kit_with_identity(endpoint.kit, tmp_path / "new", lambda c, k: None)
    assert ask(old).decision is Decision.APPROVE  # the agent that still runs
    assert ask(renewed).decision is Decision.APPROVE  # restarted, on its new certificate
    refused = ask(old, job_id="job-2")
    assert (refused.decision, refused.rule) == (Decision.REJECT, ENDPOINT_RULE)
    assert "may not use the approval endpoint" in refused.reason
