"""Things that do not exist answer 404 naming them, on both servers and through the CLI.

A job, a step of a job, a global model, a silo, an approval request: asked for, cancelled
or decided when it does not exist, the answer is a 404 whose message names it, and the
CLI says so on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.conftest import Servers

pytestmark = pytest.mark.integration

NO_JOB = "no-such-job-4711"
MODEL = "0" * 64
ORCHESTRATOR = [
    ("alice", "GET", f"/v1/jobs/{NO_JOB}", None),
    ("alice", "POST", f"/v1/jobs/{NO_JOB}/cancel", None),
    ("alice", "GET", f"/v1/jobs/{NO_JOB}/model", None),
    ("alice", "GET", f"/v1/jobs/{NO_JOB}/literal", None),
    (
        "alice",
        "POST",
        f"/v1/jobs/{NO_JOB}/steps",
        {"kind": "train", "silo": "silo-a", "model": MODEL},
    ),
    ("alice", "GET", f"/v1/jobs/{NO_JOB}/steps/step-1", None),
    ("alice", "POST", f"/v1/jobs/{NO_JOB}/aggregate", {"steps": ["step-1"], "round": 1}),
    ("alice", "POST", f"/v1/jobs/{NO_JOB}/finish", {"model": MODEL}),
    ("silo-a", "GET", f"/v1/agent/jobs/{NO_JOB}/bundle", None),
    ("silo-a", "GET", f"/v1/agent/jobs/{NO_JOB}/context", None),
    ("silo-a", "GET", f"/v1/agent/jobs/{NO_JOB}/params/{MODEL}", None),
]


@pytest.mark.parametrize(
    ("who", "method", "path", "body"), ORCHESTRATOR, ids=[f"{m} {p}" for _, m, p, _ in ORCHESTRATOR]
)
def test_the_orchestrator_answers_404_naming_a_missing_job(
    servers: Servers, who: str, method: str, path: str, body: object
) -> None:
    answer = servers.identities[who].request(
        method, servers.orchestrator.url + path, json=body, timeout=20
    )
    assert answer.status_code == 404, answer.text
    assert NO_JOB in answer.json()["error"]


@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/jobs/x/y/z"])
def test_a_route_that_does_not_exist_is_named(servers: Servers, path: str) -> None:
    answer = servers.identities["alice"].request("GET", servers.orchestrator.url + path, timeout=20)
    assert answer.status_code == 404
    assert path in answer.json()["error"]


APPROVAL = [
    ("silo-a", "GET", "/v1/requests/no-such-request", None),
    ("silo-a admin", "GET", "/v1/requests/no-such-request", None),
    ("silo-a admin", "POST", "/v1/requests/no-such-request/approve", {}),
    ("silo-a admin", "POST", "/v1/requests/no-such-request/reject", {"reason": "no"}),
]


@pytest.mark.parametrize(("who", "method", "path", "body"), APPROVAL)
def test_the_approval_endpoint_answers_404_naming_a_missing_request(
    servers: Servers, who: str, method: str, path: str, body: object
) -> None:
    answer = servers.identities[who].request(
        method, servers.approval.url + path, json=body, timeout=20
    )
    assert answer.status_code == 404, answer.text
    assert "no-such-request" in answer.json()["error"]


def fedsilo(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_")}
    return subprocess.run(
        [sys.executable, "-m", "fedsilo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workspace,
        env={**env, "COLUMNS": "200"},
        check=False,
    )


CLI = [
    (("job", "show", NO_JOB), NO_JOB),
    (("job", "cancel", NO_JOB), NO_JOB),
    (("model", "get", NO_JOB, "-o", "model.safetensors"), NO_JOB),
    (("approval", "show", "no-such-request", "--silo", "silo-a"), "no-such-request"),
    (("approval", "approve", "no-such-request", "--silo", "silo-a"), "no-such-request"),
    (("approval", "reject", "no-such-request", "--silo", "silo-a"), "no-such-request"),
]


@pytest.mark.parametrize(("args", "named"), CLI, ids=[" ".join(a[:2]) for a, _ in CLI])
def test_the_cli_says_what_is_missing_on_one_line(
    servers: Servers, args: tuple[str, ...], named: str
) -> None:
    done = fedsilo(servers.workspace.root, *args[:2], *args[2:], "-w", str(servers.workspace.root))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert named in done.stderr, done.stderr
    assert "error:" in done.stderr
