"""What an approver sees, through the real processes: what will leave and what will run.

silo-a holds any job named ``reviewed`` whose code differs from the code it approved last
for that name. Its administrator reads the held request with ``fedsilo approval show``:
the model's size and tensors, the metrics, every file, and the diff against the code
approved before. Parameters that are not the declared model never leave.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient
from fedsilo.audit import AuditEntry, AuditLog, audit_path
from fedsilo.jobs import load_job
from fedsilo.runtime import down, up
from tests.integration.conftest import TASK, Federation, make_federation, write_job

pytestmark = pytest.mark.integration

RULE = """\
  - name: changed-code-needs-a-person
    when: {job_name_in: [reviewed], code_changed: true}
    decision: manual

"""
SMALL = "nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10)"
WIDER = "nn.Linear(64, 48), nn.ReLU(), nn.Dropout(0.1), nn.Linear(48, 10)"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = make_federation(tmp_path_factory.mktemp("show"), "show")
    policy = fed.workspace.kit("silo-a").policy_file
    policy.write_text(policy.read_text().replace("rules:\n", "rules:\n" + RULE, 1))
    up(fed.root)
    try:
        yield fed
    finally:
        down(fed.root)


def _job(fed: Federation, name: str, task: str) -> Path:
    folder = fed.scratch / f"{name}-{len(list(fed.scratch.iterdir()))}"
    job = write_job(folder, rounds=1, name=name, silos="[silo-a]")
    (folder / "task" / "task.py").write_text(task)
    return job


def _submit(fed: Federation, job: Path) -> str:
    spec, code_dir = load_job(job)
    with OrchestratorClient(fed.submitter) as client:
        return client.submit(spec, code_dir, signing_key=fed.key)


def _held(fed: Federation, job_id: str) -> str:
    """The request id of the job, once silo-a holds it for a person."""
    with OrchestratorClient(fed.submitter) as client:
        deadline = time.monotonic() + 60
        info = client.job(job_id)
        while (found := re.search(r"request ([0-9a-f]{32})", info.detail or "")) is None:
            assert time.monotonic() < deadline and not info.state.finished, info
            info = client.job(job_id, after=info.version, wait=5)
    return found.group(1)


def _wait(fed: Federation, job_id: str) -> JobInfo:
    with OrchestratorClient(fed.submitter) as client:
        return client.wait(job_id, timeout=120)


def _cli(fed: Federation, *args: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsilo",
            "approval",
            *args,
            "--silo",
            "silo-a",
            "-w",
            str(fed.root),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _events(fed: Federation, job_id: str) -> list[AuditEntry]:
    kit = fed.workspace.kit("silo-a")
    entries = AuditLog(audit_path(kit.storage_path), actor="silo-a").entries()
    return [e for e in entries if e.data.get("job_id") == job_id]


def test_show_gives_sizes_files_and_the_diff_against_the_last_approval(fed: Federation) -> None:
    first = _submit(fed, _job(fed, "reviewed", TASK))
    request = _held(fed, first)
    shown = _cli(fed, "show", request)
    # never approved before: held, every file new, the model and its size stated
    assert "silo silo-a approved no job named 'reviewed' before: every file is new" in shown
    assert "model parameters: 2,410 values in 4 tensors, 9.4 KiB an upload" in shown
    assert re.search(r"0\.weight\s+\[32, 64\] float32\s+8 KiB", shown), shown
    assert "metrics named: loss, accuracy, with num_samples and epsilon, at most 32 B" in shown
    assert re.search(r"input\s+silo-a:digits-train \(sensitive, \d[\d.]* KiB\)", shown), shown
    task_sha = hashlib.sha256(TASK.encode()).hexdigest()
    assert f"{task_sha[:12]}  task.py" in shown and "MODEL.json" in shown
    assert f"{task_sha}  task.py" in _cli(fed, "show", request[:12], "--wide")
    assert "approve by silo-a-admin" in _cli(fed, "approve", request, "--reason", "read it")
    assert _wait(fed, first).state is JobState.SUCCEEDED

    # the same name with a wider model: held again, and the approver reads what changed
    second = _submit(fed, _job(fed, "reviewed", TASK.replace(SMALL, WIDER)))
    request = _held(fed, second)
    shown = _cli(fed, "show", request)
    assert f"changes      against the code approved last for 'reviewed' (job {first}):" in shown
    assert re.search(r"changed\s+MODEL.json, task.py", shown), shown
    assert f"-    return nn.Sequential({SMALL})" in shown
    assert f"+    return nn.Sequential({WIDER})" in shown
    assert "model parameters: 3,610 values in 4 tensors, 14.1 KiB an upload" in shown
    entry = json.loads(_cli(fed, "show", request, "--json"))
    model = next(o for o in entry["request"]["outputs"] if o["name"] == "model")
    assert model["bytes"] == 3610 * 4 and model["model"]["parameters"] == 3610
    assert entry["request"]["code_change"]["previous_job_id"] == first
    _cli(fed, "reject", request, "--reason", "the model grew")
    refused = _wait(fed, second)
    assert refused.state is JobState.FAILED and "the model grew" in (refused.error or "")

    # a rejected bundle is not an approved one: the first code again runs without a person
    third = _submit(fed, _job(fed, "reviewed", TASK))
    assert _wait(fed, third).state is JobState.SUCCEEDED
    answered = [e for e in _events(fed, third) if e.event == "approval.answered"]
    assert answered and answered[0].data["rule"] == "everything-else"


SMUGGLER = TASK.replace(
    "def train(model, ctx):\n",
    "def train(model, ctx):\n"
    "    model.register_buffer('smuggled', torch.arange(100, dtype=torch.float32))\n",
)


def test_parameters_that_are_not_the_declared_model_never_leave(fed: Federation) -> None:
    job_id = _submit(fed, _job(fed, "smuggler", SMUGGLER))
    info = _wait(fed, job_id)
    assert info.state is JobState.FAILED
    error = info.error or ""
    assert "silo 'silo-a'" in error and "tensor 'smuggled'" in error, error
    assert "declared-model" in error and "nothing was sent" in error
    events = _events(fed, job_id)
    [refused] = [e for e in events if e.event == "output.refused"]
    assert refused.data["tensor"] == "smuggled" and refused.data["round"] == 1
    uploads = [e for e in events if e.event == "output.uploaded" and e.data["output"] == "model"]
    assert [e.data["round"] for e in uploads] == [0]  # the model as built, never the update
