"""The federation's members changed while it runs, through the real processes.

The administrator (``carol``) lists the members, removes a silo in the middle of a job that
may go on without it, revokes a silo's certificate in the middle of a job that may not, and
gives the silo a renewed certificate it comes back with: no restart of the orchestrator and
no new kit for anyone else. Every change is in the orchestrator's audit log.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import JsonValue

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.config import load_kit
from fedsilo.errors import CertificateRefused, Conflict, InvalidRequest, NotFound
from fedsilo.jobs import load_job
from fedsilo.provisioning._provision import _make_cert
from fedsilo.runtime import down, processes, up
from tests.integration.conftest import Federation, make_federation, write_job

pytestmark = pytest.mark.integration

SLOW = ", extra: {sleep: 1.5}"


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    federation = make_federation(tmp_path, "members", admins=("carol",))
    up(federation.root)
    try:
        yield federation
    finally:
        down(federation.root)


def _admin(fed: Federation) -> OrchestratorClient:
    return OrchestratorClient(fed.workspace.kit("carol"))


def _cli(fed: Federation, *args: str) -> subprocess.CompletedProcess[str]:
    kit = str(fed.workspace.kit_dir("carol"))
    return subprocess.run(
        [sys.executable, "-m", "fedsilo", "members", *args, "--kit", kit],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _sign(fed: Federation, name: str, unit: str, folder: Path) -> Path:
    """A certificate and key for ``name`` signed by the federation's CA, in ``folder``."""
    ca = fed.root / "ca"
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), None)
    key, cert = _make_cert(fed.workspace.federation, name, unit, ca_key, ca_cert)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "cert.pem"


def _events(fed: Federation, kind: str) -> list[dict[str, JsonValue]]:
    orchestrator = fed.workspace.kit("orchestrator")
    return [e.data for e in read_log(audit_path(orchestrator.storage_path)) if e.event == kind]


def _submit(fed: Federation, folder: Path, rounds: int, **overrides: str) -> str:
    spec, code_dir = load_job(write_job(folder, rounds=rounds, extra=SLOW, **overrides))
    with OrchestratorClient(fed.submitter) as client:
        return client.submit(spec, code_dir, signing_key=fed.key)


def _wait_round(fed: Federation, job_id: str, round_: int) -> None:
    deadline = time.monotonic() + 120
    with OrchestratorClient(fed.submitter) as client:
        while client.job(job_id).current_round < round_:
            assert time.monotonic() < deadline, f"job {job_id} never reached round {round_}"
            time.sleep(0.3)


def test_the_administrator_lists_members_with_their_certificates(fed: Federation) -> None:
    listed = _cli(fed, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    members = {m["name"]: m for m in json.loads(listed.stdout)}
    assert set(members) == {"silo-a", "silo-b", "silo-c", "alice", "carol"}
    assert members["silo-a"]["compute"] == "silo-a-cpu"
    assert members["silo-a"]["added_by"] == "provision"
    # a silo has connected: its certificate's expiry is known, about two years ahead
    (cert,) = members["silo-a"]["certificates"]
    assert 700 < (cert["not_after"] - time.time()) / 86400 < 740
    # only the administrator may
    with OrchestratorClient(fed.submitter) as client, pytest.raises(CertificateRefused) as exc:
        client.members()
    assert "needs the federation's administrator" in str(exc.value)


def test_changes_that_cannot_be_made_are_refused_by_name(fed: Federation, tmp_path: Path) -> None:
    taken = _sign(fed, "silo-a", "silo", tmp_path / "again").read_text()
    with _admin(fed) as carol:
        with pytest.raises(Conflict, match="the name 'silo-a' is taken"):
            carol.add_member(taken, compute="other-cpu")
        newcomer = _sign(fed, "silo-d", "silo", tmp_path / "d").read_text()
        with pytest.raises(Conflict, match="compute 'silo-b-cpu' is silo 'silo-b's"):
            carol.add_member(newcomer, compute="silo-b-cpu")
        with pytest.raises(InvalidRequest, match="give the name of its compute"):
            carol.add_member(newcomer)
        # a certificate of another federation's CA
        (tmp_path / "elsewhere").mkdir()
        other = make_federation(tmp_path / "elsewhere", "members")
        stranger = (other.workspace.kit_dir("silo-a") / "cert.pem").read_text()
        with pytest.raises(InvalidRequest, match="not signed by the CA of federation 'members'"):
            carol.add_member(stranger, compute="x-cpu")
        with pytest.raises(NotFound, match=r"no member 'silo-aa'.*did you mean 'silo-a'"):
            carol.remove_member("silo-aa")
        with pytest.raises(Conflict, match="only administrator"):
            carol.remove_member("carol")
        # a new silo's certificate is admitted: it is a member at once, no restart
        added = carol.add_member(newcomer, compute="silo-d-cpu")
        assert (added.name, added.role, added.added_by) == ("silo-d", "silo", "carol")
        assert "silo-d" in [m.name for m in carol.status().members]
    assert [e["member"] for e in _events(fed, "member.added")] == ["silo-d"]


def test_a_silo_removed_mid_job_is_left_out_of_the_rounds_after(
    fed: Federation, tmp_path: Path
) -> None:
    job_id = _submit(fed, tmp_path / "job", rounds=4, min_silos="2", round_timeout="30")
    _wait_round(fed, job_id, 2)
    removed = _cli(fed, "remove", "silo-c")
    assert removed.returncode == 0, removed.stderr
    assert "removed silo 'silo-c'" in removed.stdout
    with OrchestratorClient(fed.submitter) as client:
        info = client.wait(job_id, timeout=180)
    assert info.state is JobState.SUCCEEDED, info.error
    last = info.history[-1]
    assert set(last.train) == {"silo-a", "silo-b"}
    missed = [n for r in info.history for n in r.notes if n.kind == "missed"]
    assert missed and all(n.silo == "silo-c" for n in missed)
    assert any("removed from federation 'members' by carol" in n.text for n in missed)
    # its next request is refused; a job naming it is refused at submit
    refused = pytest.raises(CertificateRefused, match="not a participant of the federation")
    with OrchestratorClient(fed.workspace.kit("silo-c")) as silo_c, refused:
        silo_c.status()
    with pytest.raises(Exception, match="silo-c"):
        _submit(fed, tmp_path / "again", rounds=1)
    (event,) = _events(fed, "member.removed")
    assert (event["member"], event["by"]) == ("silo-c", "carol")
    with _admin(fed) as carol:
        assert "silo-c" not in [m.name for m in carol.members()]
        assert "silo-c" in [m.name for m in carol.members(removed=True)]


def test_a_revoked_silo_fails_the_job_by_name_and_comes_back_renewed(
    fed: Federation, tmp_path: Path
) -> None:
    job_id = _submit(fed, tmp_path / "job", rounds=3)
    _wait_round(fed, job_id, 1)
    with _admin(fed) as carol:
        carol.revoke_member("silo-b")
    with OrchestratorClient(fed.submitter) as client:
        info = client.wait(job_id, timeout=120)
    assert info.state is JobState.FAILED
    assert info.error is not None and "silo 'silo-b' lost its certificate: revoked by carol" in (
        info.error
    )
    kit_dir = fed.workspace.kit_dir("silo-b")
    with OrchestratorClient(load_kit(kit_dir)) as silo_b, pytest.raises(CertificateRefused):
        silo_b.status()
    (event,) = _events(fed, "certificate.revoked")
    assert (event["member"], event["by"]) == ("silo-b", "carol")

    # a renewed certificate, signed by the CA from the silo's new key, takes it back in
    renewed = _sign(fed, "silo-b", "silo", tmp_path / "renewed")
    done = _cli(fed, "renew", "silo-b", str(renewed))
    assert done.returncode == 0, done.stderr
    for name in ("cert.pem", "key.pem"):
        (kit_dir / name).write_bytes((renewed.parent / name).read_bytes())
    agent = next(p for p in processes(fed.root) if p.name == "silo-b")
    down_and_up(fed, agent.pid)
    with OrchestratorClient(fed.submitter) as client:
        info = client.wait(_submit(fed, tmp_path / "after", rounds=1), timeout=120)
    assert info.state is JobState.SUCCEEDED, info.error
    assert [e["member"] for e in _events(fed, "member.renewed")] == ["silo-b"]


def test_a_certificate_renews_without_a_pause(fed: Federation, tmp_path: Path) -> None:
    kit_dir = fed.workspace.kit_dir("silo-a")
    old = load_kit(kit_dir)
    renewed = _sign(fed, "silo-a", "silo", tmp_path / "renewed")
    done = _cli(fed, "renew", "silo-a", str(renewed))
    assert done.returncode == 0, done.stderr
    # both certificates connect until the old one is revoked
    with OrchestratorClient(old) as silo_a:
        assert [s.name for s in silo_a.status().silos] == ["silo-a"]
    saved = tmp_path / "old-kit"
    shutil.copytree(kit_dir, saved)
    for name in ("cert.pem", "key.pem"):
        (kit_dir / name).write_bytes((renewed.parent / name).read_bytes())
    agent = next(p for p in processes(fed.root) if p.name == "silo-a")
    down_and_up(fed, agent.pid)
    # the hint renew printed, run as printed from elsewhere, revokes the old certificate
    hint = done.stdout.split("revoke the old: ", 1)[1].strip()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    revoked = subprocess.run(
        shlex.split(hint),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PATH": path},
    )
    assert revoked.returncode == 0, revoked.stderr
    with OrchestratorClient(load_kit(saved)) as stale, pytest.raises(CertificateRefused):
        stale.status()
    with OrchestratorClient(fed.submitter) as client:
        info = client.wait(_submit(fed, tmp_path / "after", rounds=1), timeout=120)
    assert info.state is JobState.SUCCEEDED, info.error


def down_and_up(fed: Federation, pid: int) -> None:
    """Stop one agent (its certificate changed on disk) and let ``up`` start it again."""
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(p.pid == pid and p.alive for p in processes(fed.root)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    up(fed.root)
