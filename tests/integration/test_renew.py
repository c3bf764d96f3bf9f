"""A silo renews its certificates while the federation runs, through the ``fedsilo`` CLI.

silo-a makes new keys beside its kit and a renewal request, the CA's machine signs it, the
administrator (``carol``) gives the member its new certificate, silo-a installs the reply
(refused before carol's step: the orchestrator would turn the new certificate away) and
restarts its agent; the old certificate is revoked and refused, and a job trains on silo-a
with its new one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.config import cert_fingerprint, load_kit
from fedsilo.errors import CertificateRefused
from fedsilo.jobs import load_job
from fedsilo.runtime import processes
from tests.integration.conftest import Federation, write_job
from tests.integration.test_enroll import fed  # noqa: F401 - a running federation with carol
from tests.integration.test_enroll import fedsilo as run_cli
from tests.integration.test_members import down_and_up

pytestmark = pytest.mark.integration


def fedsilo(*args: str | Path, cwd: Path, ok: bool = True) -> str:
    """Run the CLI as test_enroll does, wide, its output on one line."""
    return run_cli(*args, cwd=cwd, ok=ok, env={"COLUMNS": "300"}).replace("\n", " ")


def _fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def test_a_silo_renews_its_certificate_while_the_federation_runs(
    fed: Federation,  # noqa: F811
    tmp_path: Path,
) -> None:
    kit_dir = fed.workspace.kit_dir("silo-a")
    carol = fed.workspace.kit_dir("carol")
    old = _fingerprint(kit_dir / "cert.pem")
    saved = tmp_path / "old-kit"
    shutil.copytree(kit_dir, saved)

    # on silo-a's machine: new keys beside the kit, the kit goes on as it is
    made = fedsilo("certs", "renew", "--kit", kit_dir, cwd=tmp_path)
    request = kit_dir / "renewal" / "silo-a.renewal.yaml"
    assert str(request) in made
    assert _fingerprint(kit_dir / "cert.pem") == old

    # on the CA's machine: a renewal of silo-a, with the certificate it renews
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    sent = Path(shutil.copy(request, transfer))
    signed = fedsilo("ca", "sign", sent, "-w", fed.root, "--yes", cwd=tmp_path)
    assert "renewal of" in signed and old in signed
    reply = transfer / "silo-a.reply.yaml"
    assert b"PRIVATE KEY" not in reply.read_bytes() + sent.read_bytes()

    # installed before the administrator's step, the orchestrator would refuse it: not done
    early = fedsilo("certs", "install", reply, "--kit", kit_dir, cwd=tmp_path, ok=False)
    assert "does not take the new certificate of 'silo-a' yet" in early
    assert "fedsilo members renew silo-a" in early
    assert _fingerprint(kit_dir / "cert.pem") == old and (kit_dir / "renewal").is_dir()

    renewed = fedsilo("members", "renew", "silo-a", reply, "--kit", carol, cwd=tmp_path)
    assert "may connect with its new certificate now" in renewed
    installed = fedsilo("certs", "install", reply, "--kit", kit_dir, cwd=tmp_path)
    assert "installed the renewed certificates of silo 'silo-a'" in installed
    new = _fingerprint(kit_dir / "cert.pem")
    assert new != old and not (kit_dir / "renewal").exists()
    assert load_kit(kit_dir).name == "silo-a"

    # the agent, restarted, connects with the new certificate; the old one is revoked
    agent = next(p for p in processes(fed.root) if p.name == "silo-a")
    down_and_up(fed, agent.pid)
    fedsilo("members", "revoke", "silo-a", "--fingerprint", old[:16], "--kit", carol, cwd=tmp_path)
    with OrchestratorClient(load_kit(saved)) as stale, pytest.raises(CertificateRefused):
        stale.status()
    with OrchestratorClient(load_kit(kit_dir)) as silo_a:
        assert silo_a.whoami()["name"] == "silo-a"

    spec, code_dir = load_job(write_job(tmp_path / "job", rounds=1))
    with OrchestratorClient(fed.submitter) as client:
        info = client.wait(client.submit(spec, code_dir, signing_key=fed.key), timeout=180)
        assert info.state is JobState.SUCCEEDED, info.error
        assert "silo-a" in info.history[-1].train
    with OrchestratorClient(fed.workspace.kit("carol")) as admin:
        (member,) = [m for m in admin.members() if m.name == "silo-a"]
    live = [c.fingerprint for c in member.certificates if c.revoked_at is None]
    assert live == [new]
