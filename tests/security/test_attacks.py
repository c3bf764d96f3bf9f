"""The silo as an attacker would try it: each attack fails, says so, and is audited.

Every case runs a real job through the real processes (orchestrator, agents, approval
endpoints, bubblewrap sandboxes) and checks three things: the job did not run or the
data did not move, the submitter got a clear error, and the silo's audit log has the line.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
import tarfile
from pathlib import Path

import pytest

from fedsilo.api import JobInfo, JobState, OrchestratorClient, SubmitRequest
from fedsilo.audit import AuditEntry, AuditLog, audit_path
from fedsilo.errors import FedsiloError
from fedsilo.jobs import Manifest, load_job, load_private_key, new_signing_key, pack_bundle
from tests.security.conftest import SECRET, Attackable

pytestmark = pytest.mark.integration


def audit(fed: Attackable, participant: str) -> list[AuditEntry]:
    kit = fed.workspace.kit(participant)
    return AuditLog(audit_path(kit.storage_path), actor=participant).entries()


def events(fed: Attackable, participant: str, job_id: str) -> list[AuditEntry]:
    return [e for e in audit(fed, participant) if e.data.get("job_id") == job_id]


def kept_error(fed: Attackable, silo: str, info: JobInfo) -> str:
    """The whole error ``silo`` kept of the job's failure, found by the id the submitter got.

    What task code raised stays in the silo: the submitter gets its class and the id only.
    """
    from fedsilo.silo._errors import ErrorStore

    found = re.search(r"error (e-[0-9a-f]{12})", info.error or "")
    assert found is not None, info.error
    kept = ErrorStore(fed.silo_kit(silo).storage_path, silo).get(found.group(1))
    assert kept.message not in (info.error or "")
    return kept.message


def assert_secret_stayed(fed: Attackable) -> None:
    """No byte of any silo's secret reached the orchestrator's storage."""
    root = fed.workspace.kit("orchestrator").storage_path
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the secret reached {path}"


def secret_path(fed: Attackable, silo: str) -> Path:
    from fedsilo.storage import Catalog

    with Catalog(fed.silo_kit(silo).storage_path, silo=silo) as catalog:
        return catalog.path_of("secret")


# -- the sandbox ------------------------------------------------------------------------------


def test_job_code_cannot_read_another_silos_storage(fed: Attackable) -> None:
    target = secret_path(fed, "silo-b")
    info = fed.run(fed.job("read-other-silo", extra=f"attack: read, target: '{target}'"))
    assert info.state is JobState.FAILED
    assert "silo-a" in (info.error or "") and "FileNotFoundError" in (info.error or "")
    assert "No such file" in kept_error(fed, "silo-a", info)
    assert any(e.event == "task.failed" for e in events(fed, "silo-a", info.id))
    assert_secret_stayed(fed)


def test_job_code_cannot_open_a_network_connection(fed: Attackable) -> None:
    host, port = fed.submitter.orchestrator_host, fed.submitter.orchestrator_port
    with socket.create_connection((host, port), timeout=3):
        pass  # the orchestrator is reachable from outside the sandbox
    info = fed.run(fed.job("phone-home", extra=f"attack: connect, target: '{host}:{port}'"))
    assert info.state is JobState.FAILED
    assert "silo-a" in (info.error or "")
    kept = kept_error(fed, "silo-a", info)
    assert any(w in kept for w in ("Network is unreachable", "Connection refused"))
    assert any(e.event == "task.failed" for e in events(fed, "silo-a", info.id))


def test_job_code_cannot_read_the_agents_private_key(fed: Attackable) -> None:
    key = fed.silo_kit("silo-a").key_file
    assert key.read_bytes()  # it exists, outside the sandbox
    info = fed.run(fed.job("steal-key", extra=f"attack: read, target: '{key}'"))
    assert info.state is JobState.FAILED
    assert "No such file" in kept_error(fed, "silo-a", info)
    assert any(e.event == "task.failed" for e in events(fed, "silo-a", info.id))


@pytest.mark.parametrize("where", ["storage", "code", "input"])
def test_job_code_cannot_write_outside_its_output_folder(fed: Attackable, where: str) -> None:
    storage = fed.silo_kit("silo-a").storage_path
    target = {
        "storage": storage / "planted.txt",
        "code": storage / "jobs" / "planted-in-code.txt",
        "input": secret_path(fed, "silo-a"),
    }[where]
    before = target.read_bytes() if target.exists() else None
    info = fed.run(fed.job(f"write-{where}", extra=f"attack: write, target: '{target}'"))
    assert info.state is JobState.FAILED
    kept = kept_error(fed, "silo-a", info)
    assert any(w in kept for w in ("Read-only file system", "No such file", "Permission denied"))
    assert (target.read_bytes() if target.exists() else None) == before
    assert any(e.event == "task.failed" for e in events(fed, "silo-a", info.id))


def test_job_code_sees_none_of_the_agents_environment(fed: Attackable) -> None:
    info = fed.run(fed.job("env", extra="attack: env"))
    assert info.state is JobState.SUCCEEDED, info.error
    assert info.history[0].train["silo-a"]["leaked_chars"] == 0


# -- signed code ----------------------------------------------------------------------------


def test_an_unsigned_bundle_is_refused(fed: Attackable) -> None:
    info = fed.run(fed.job("unsigned"), key=None)
    assert info.state is JobState.FAILED
    assert "code-must-be-signed" in (info.error or "") and "silo-a" in (info.error or "")
    refused = [e for e in events(fed, "silo-a", info.id) if e.event == "job.refused"]
    assert refused and refused[0].data["rule"] == "code-must-be-signed"
    assert not [e for e in events(fed, "silo-a", info.id) if e.event == "job.started"]


def test_a_bundle_signed_by_an_untrusted_key_is_refused(fed: Attackable, tmp_path: Path) -> None:
    new_signing_key(tmp_path / "mallory.key")
    info = fed.run(fed.job("untrusted"), key=load_private_key(tmp_path / "mallory.key"))
    assert info.state is JobState.FAILED
    assert "code-must-be-signed" in (info.error or "")
    asked = [e for e in events(fed, "silo-a", info.id) if e.event == "approval.asked"]
    assert asked and asked[0].data["signing"] == "untrusted"


def _tampered_bundle(fed: Attackable, job_file: Path) -> tuple[bytes, Manifest]:
    """A correctly signed bundle, then one byte of the code changed and the manifest redone."""
    _spec, code_dir = load_job(job_file)
    bundle, _ = pack_bundle(code_dir, signing_key=fed.key)
    entries: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle))) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            assert handle is not None
            entries[member.name] = handle.read()
    code = entries["task.py"]
    entries["task.py"] = code.replace(b'return {"num_samples": 1}', b'return {"num_samples": 2}')
    assert entries["task.py"] != code
    import hashlib

    manifest = Manifest(
        files={
            k: hashlib.sha256(v).hexdigest()
            for k, v in entries.items()
            if k not in ("MANIFEST.json", "SIGNATURE.json")
        }
    )
    entries["MANIFEST.json"] = manifest.canonical()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue()), manifest


def test_a_signed_bundle_changed_afterwards_is_refused(fed: Attackable) -> None:
    job_file = fed.job("tampered")
    spec, _ = load_job(job_file)
    bundle, manifest = _tampered_bundle(fed, job_file)
    with OrchestratorClient(fed.submitter) as client:
        digest = client._upload("/v1/uploads", bundle)
        request = SubmitRequest(spec=spec, bundle_digest=digest, manifest_digest=manifest.digest)
        job_id = client._request(
            "POST",
            "/v1/jobs",
            content=request.model_dump_json(),
            headers={"content-type": "application/json"},
        ).json()["id"]
        info = client.wait(job_id, timeout=60)
    assert info.state is JobState.FAILED
    assert "code-must-be-signed" in (info.error or "")
    asked = [e for e in events(fed, "silo-a", job_id) if e.event == "approval.asked"]
    assert asked and asked[0].data["signing"] == "invalid"


def test_a_bundle_whose_files_differ_from_its_manifest_is_refused(fed: Attackable) -> None:
    _, code_dir = load_job(fed.job("mismatch"))
    bundle, manifest = pack_bundle(code_dir, signing_key=fed.key)
    raw = gzip.decompress(bundle)
    marker = b'return {"num_samples": 1}'
    assert marker in raw
    forged = gzip.compress(raw.replace(marker, marker.replace(b"1", b"7")))
    spec, _ = load_job(fed.job("mismatch"))
    with OrchestratorClient(fed.submitter) as client:
        digest = client._upload("/v1/uploads", forged)
        request = SubmitRequest(spec=spec, bundle_digest=digest, manifest_digest=manifest.digest)
        with pytest.raises(FedsiloError, match=r"modified: task\.py"):
            client._request(
                "POST",
                "/v1/jobs",
                content=request.model_dump_json(),
                headers={"content-type": "application/json"},
            )


# -- the approval endpoint ------------------------------------------------------------------


def test_a_rejection_by_the_approval_endpoint(fed: Attackable) -> None:
    info = fed.run(fed.job("forbidden-job", silos=("silo-c",)))
    assert info.state is JobState.FAILED
    assert "forbidden-jobs" in (info.error or "") and "never runs forbidden-job" in (
        info.error or ""
    )
    answered = [e for e in events(fed, "silo-c", info.id) if e.event == "approval.answered"]
    assert answered and answered[0].data["decision"] == "reject"
    assert not [e for e in events(fed, "silo-c", info.id) if e.event == "job.started"]


def test_a_manual_hold_never_approved_never_runs(fed: Attackable) -> None:
    spec, code_dir = load_job(fed.job("needs-a-person", silos=("silo-c",)))
    with OrchestratorClient(fed.submitter) as client:
        job_id = client.submit(spec, code_dir, signing_key=fed.key)
        deadline = __import__("time").monotonic() + 30
        info = client.job(job_id)
        while "waiting for approval" not in (info.detail or ""):
            assert __import__("time").monotonic() < deadline, info
            info = client.job(job_id, after=info.version, wait=5)
        assert "silo-c" in (info.detail or "") and info.current_round == 0
        client.cancel(job_id)
        info = client.wait(job_id, timeout=30)
    assert info.state is JobState.CANCELLED and info.history == []
    silo_events = [e.event for e in events(fed, "silo-c", job_id)]
    assert "approval.asked" in silo_events and "job.started" not in silo_events


def test_an_unreachable_approval_endpoint_means_reject(fed: Attackable) -> None:
    import os
    import signal
    import time

    from fedsilo.runtime import processes

    victim = next(p for p in processes(fed.root) if p.name == "silo-b-approval")
    os.kill(victim.pid, signal.SIGTERM)
    time.sleep(1.0)
    info = fed.run(fed.job("endpoint-down", silos=("silo-b",)))
    assert info.state is JobState.FAILED
    assert "approval" in (info.error or "") and "silo-b" in (info.error or "")
    refused = [e for e in events(fed, "silo-b", info.id) if e.event == "job.refused"]
    assert refused and refused[0].data["rule"] == "approval-endpoint"


def test_a_job_whose_epsilon_exceeds_the_silos_cap_is_refused(fed: Attackable) -> None:
    info = fed.run(
        fed.job(
            "greedy-dp",
            silos=("silo-c",),
            privacy="{local: {target_epsilon: 16, target_delta: 1.0e-5}}",
        )
    )
    assert info.state is JobState.FAILED
    assert "epsilon-cap" in (info.error or "") and "at most epsilon 8" in (info.error or "")
    asked = [e for e in events(fed, "silo-c", info.id) if e.event == "approval.asked"]
    assert asked
    assert not [e for e in events(fed, "silo-c", info.id) if e.event == "job.started"]


# -- classification -------------------------------------------------------------------------


def test_a_sensitive_output_is_refused_by_policy(fed: Attackable) -> None:
    info = fed.run(fed.job("sensitive-out", outputs="{metrics: {classification: intermediate}}"))
    assert info.state is JobState.FAILED
    assert "nothing-sensitive-leaves" in (info.error or "")
    assert not [e for e in events(fed, "silo-a", info.id) if e.event == "output.uploaded"]


def test_a_sensitive_output_stays_in_the_silo_even_when_approved(fed: Attackable) -> None:
    info = fed.run(
        fed.job("leaky-job", silos=("silo-c",), outputs="{metrics: {classification: intermediate}}")
    )
    assert info.state is JobState.FAILED
    assert "sensitive" in (info.error or "") and "silo-c" in (info.error or "")
    kept = [e for e in events(fed, "silo-c", info.id) if e.event == "output.kept"]
    assert kept and kept[0].data["output"] == "model"
    assert not [e for e in events(fed, "silo-c", info.id) if e.event == "output.uploaded"]
    from fedsilo.storage import Catalog

    with Catalog(fed.silo_kit("silo-c").storage_path, silo="silo-c") as catalog:
        assert catalog.get(kept[0].data["dataset"]).classification.value == "sensitive"


def test_an_undeclared_declassification_is_refused(fed: Attackable) -> None:
    info = fed.run(
        fed.job(
            "to-eyes-on",
            outputs="{model: {classification: eyes_on}, metrics: {classification: intermediate}}",
        )
    )
    assert info.state is JobState.FAILED
    assert "declassification" in (info.error or "")
    refused = [e for e in events(fed, "silo-a", info.id) if e.event == "job.refused"]
    assert refused


def test_an_input_in_another_silos_storage_is_refused(fed: Attackable) -> None:
    info = fed.run(fed.job("foreign-input", inputs="{train: 'silo-b:data'}"))
    assert info.state is JobState.FAILED
    assert "inputs-from-this-silo-only" in (info.error or "")
    assert not [e for e in events(fed, "silo-a", info.id) if e.event == "job.started"]


# -- identities -----------------------------------------------------------------------------


def test_a_submitter_certificate_presented_as_a_silo_is_refused(fed: Attackable) -> None:
    from fedsilo.errors import CertificateRefused

    with (
        OrchestratorClient(fed.submitter, timeout=5) as client,
        pytest.raises(CertificateRefused, match="needs a silo"),
    ):
        client.next_task(0)
    refused = [e for e in audit(fed, "orchestrator") if e.event == "request.refused"]
    assert any(e.data["caller"] == "alice" for e in refused)


def test_a_silo_certificate_cannot_submit_jobs(fed: Attackable) -> None:
    from fedsilo.errors import CertificateRefused

    spec, code_dir = load_job(fed.job("as-a-silo"))
    with (
        OrchestratorClient(fed.silo_kit("silo-a"), timeout=5) as client,
        pytest.raises(CertificateRefused, match="needs a submitter"),
    ):
        client.submit(spec, code_dir, signing_key=fed.key)


def test_a_silo_cannot_fetch_the_federations_models(fed: Attackable, tmp_path: Path) -> None:
    from fedsilo.errors import CertificateRefused, NotFound

    info = fed.run(fed.job("private-model", silos=("silo-a",)))
    assert info.state is JobState.SUCCEEDED, info.error
    with OrchestratorClient(fed.silo_kit("silo-b"), timeout=5) as client:
        with pytest.raises(CertificateRefused, match="needs the job's owner or a submitter"):
            client.download_model(info.id, tmp_path / "stolen.safetensors")
        with pytest.raises(NotFound, match=f"no job '{info.id}'"):  # not silo-b's to know of
            client.download_bundle(info.id)
    assert not (tmp_path / "stolen.safetensors").exists()


# -- the audit log ----------------------------------------------------------------------------


def _verify(fed: Attackable, path: Path) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsilo",
            "audit",
            "verify",
            "--silo",
            "silo-a",
            "-w",
            str(fed.root),
        ],
        capture_output=True,
        text=True,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_a_tampered_audit_log_is_caught(fed: Attackable, tamper: str, tmp_path: Path) -> None:
    path = audit_path(fed.silo_kit("silo-a").storage_path)
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    assert len(lines) >= 6
    changed = list(lines)
    if tamper == "edit":
        entry = json.loads(changed[3])
        entry["actor"] = "someone-else"
        changed[3] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    elif tamper == "delete":
        del changed[3]
    else:
        changed[3], changed[4] = changed[4], changed[3]
    try:
        path.write_text("".join(changed))
        code, out = _verify(fed, path)
    finally:
        path.write_bytes(original)
    assert code == 1
    assert "line 4" in out or "line 5" in out
    code, out = _verify(fed, path)
    assert code == 0, out
