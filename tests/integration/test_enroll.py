"""A fourth silo joins a running federation with a key it made itself.

The silo's machine (a folder of its own) makes its keys and request, the CA's machine (the
provisioned workspace) signs it, the silo finishes its kit with a storage root of its own
choosing and registers its data; the federation's administrator admits it without a
restart, and a job runs on all four silos. Every step goes through the ``fedsilo`` CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.config import Role, load_kit
from fedsilo.jobs import load_job
from fedsilo.quickstart._quickstart import _split_digits
from fedsilo.runtime import down, up
from tests.integration.conftest import (
    SILOS,
    Federation,
    free_port,
    make_federation,
    stop_all,
    wait_online,
    write_job,
)

pytestmark = pytest.mark.integration


def fedsilo(
    *args: str | Path, cwd: Path, ok: bool = True, env: dict[str, str] | None = None
) -> str:
    """Run the CLI; its output (stdout, then stderr) once it exits as ``ok`` says."""
    done = subprocess.run(
        [sys.executable, "-m", "fedsilo", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    assert (done.returncode == 0) == ok, f"fedsilo {' '.join(map(str, args))}:\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    federation = make_federation(tmp_path, "enroll", admins=("carol",))
    up(federation.root)
    try:
        yield federation
    finally:
        down(federation.root)


def test_a_silo_enrolled_with_its_own_key_joins_and_trains(fed: Federation, tmp_path: Path) -> None:
    machine = tmp_path / "silo-d-machine"
    machine.mkdir()
    kit_dir = machine / "kit"
    approval_port = free_port()
    fedsilo(
        "enroll", "request", "--federation", "enroll", "--name", "silo-d", "--role", "silo",
        "--compute", "silo-d-cpu", "--approval-port", str(approval_port), "--to", kit_dir,
        cwd=machine,
    )  # fmt: skip
    # the request travels to the CA's machine, the reply back
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    shutil.copy(kit_dir / "silo-d.request.yaml", transfer)
    signed = fedsilo(
        "ca", "sign", transfer / "silo-d.request.yaml", "-w", fed.root, "--yes", cwd=tmp_path
    )
    assert "silo-d" in signed and "main key sha256" in signed
    reply = transfer / "silo-d.reply.yaml"
    shutil.copy(reply, machine)
    fedsilo(
        "enroll", "finish", "silo-d.reply.yaml", "--to", kit_dir, "--storage", "data", cwd=machine
    )
    kit = load_kit(kit_dir)
    assert kit.role is Role.SILO and kit.storage_path == machine / "data"
    assert not list(transfer.glob("*.key")) and b"PRIVATE KEY" not in reply.read_bytes()

    # the silo registers its own data with its kit
    shards = _split_digits(machine / "source")["silo-a"]
    for part in ("train", "test"):
        fedsilo(
            "data", "add", shards[part], "--kit", kit_dir, "--name", f"digits-{part}",
            "--classification", "sensitive", cwd=machine,
        )  # fmt: skip
    assert (machine / "data" / "catalog.db").is_file()

    # the administrator admits it while the federation runs
    added = fedsilo("members", "add", reply, "--kit", fed.workspace.kit_dir("carol"), cwd=tmp_path)
    assert "silo 'silo-d'" in added

    logs = [machine / "approval.log", machine / "agent.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log, command in zip(logs, (("approval", "serve"), ("silo", "start")), strict=True):
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "fedsilo", *command, "--kit", str(kit_dir)],
                        cwd=machine,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        wait_online(fed, logs)
        with OrchestratorClient(fed.submitter) as client:
            assert "silo-d" in [s.name for s in client.status().silos]
            job = write_job(tmp_path / "job", rounds=2, silos=f"[{', '.join(SILOS)}, silo-d]")
            spec, code_dir = load_job(job)
            job_id = client.submit(spec, code_dir, signing_key=fed.key)
            info = client.wait(job_id, timeout=300)
        assert info.state is JobState.SUCCEEDED, info.error
        assert set(info.history[-1].train) == {*SILOS, "silo-d"}
    finally:
        stop_all(procs)
