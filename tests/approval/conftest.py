"""A silo kit with real certificates, and its approval endpoint served over mutual TLS.

Certificates are made here with ``cryptography`` (ECDSA P-256, as provisioning makes them):
a federation CA, the silo's own certificate, the endpoint's server certificate (SAN
localhost and 127.0.0.1), the silo administrator's, another participant's, and one from a
foreign CA. The endpoint runs in uvicorn on a free loopback port in a thread.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedsilo.approval import (
    ApprovalRequest,
    Declassification,
    InputRef,
    OutputRef,
    SigningStatus,
)
from fedsilo.approval._server import build_app, server_config
from fedsilo.config import Classification, Kit, load_kit

SILO = "silo-a"

POLICY = """\
trusted_keys: {}
rules:
  - name: code-must-be-signed
    when: {signature: [unsigned, invalid, untrusted]}
    decision: reject
  - name: a-person-decides
    when: {job_name_in: [needs-a-person]}
    decision: manual
    expires_after_hours: 2
  - name: everything-else
    decision: approve
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_request(**changes: Any) -> ApprovalRequest:
    """A well-formed request of silo ``silo-a``: signed, own sensitive input, model leaves."""
    base: dict[str, Any] = {
        "job_id": "job-1",
        "job_name": "digits",
        "silo": SILO,
        "compute": "silo-a-cpu",
        "bundle_digest": "b" * 64,
        "manifest_digest": "m" * 64,
        "author": "alice",
        "signing": SigningStatus.TRUSTED,
        "signing_key": "alice",
        "inputs": (
            InputRef(storage=SILO, dataset="train", classification=Classification.SENSITIVE),
        ),
        "outputs": (
            OutputRef(
                name="model", destination="orchestrator", classification=Classification.INTERMEDIATE
            ),
            OutputRef(
                name="metrics",
                destination="orchestrator",
                classification=Classification.INTERMEDIATE,
            ),
        ),
        "declassifications": (
            Declassification(
                output="model",
                from_=Classification.SENSITIVE,
                to=Classification.INTERMEDIATE,
            ),
        ),
    }
    base.update(changes)
    return ApprovalRequest.model_validate(base)


class Authority:
    """A certificate authority that issues P-256 certificates and writes them as PEM."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def write_ca(self, path: Path) -> None:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, cert_path: Path, key_path: Path, *, server: bool = False) -> None:
        """Issue a certificate for ``cn`` (for a server: SAN localhost and 127.0.0.1)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            names: list[x509.GeneralName] = [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


@pytest.fixture(scope="session")
def authority() -> Authority:
    return Authority("demo federation CA")


def write_silo_kit(
    folder: Path, ca: Authority, *, port: int, storage: Path, policy: str = POLICY
) -> Kit:
    """A complete kit of silo ``silo-a`` in ``folder``, its endpoint on 127.0.0.1:port."""
    folder.mkdir(parents=True)
    ca.write_ca(folder / "ca.crt")
    ca.issue(SILO, folder / "cert.pem", folder / "key.pem")
    ca.issue(f"{SILO}-approval", folder / "approval.crt", folder / "approval.key", server=True)
    ca.issue(f"{SILO}-admin", folder / "admin.crt", folder / "admin.key")
    (folder / "policy.yaml").write_text(policy)
    kit = {
        "federation": "demo",
        "role": "silo",
        "name": SILO,
        "orchestrator_host": "127.0.0.1",
        "orchestrator_port": 1,
        "storage_root": str(storage),
        "approval_host": "127.0.0.1",
        "approval_port": port,
        "silo": {
            "name": SILO,
            "storage": {"root": str(storage)},
            "compute": {"name": "silo-a-cpu"},
        },
    }
    (folder / "kit.yaml").write_text(yaml.safe_dump(kit))
    return load_kit(folder)


def kit_with_identity(kit: Kit, folder: Path, issue: Callable[[Path, Path], None]) -> Kit:
    """A copy of ``kit`` in ``folder`` whose own certificate is replaced by ``issue``."""
    shutil.copytree(kit.kit_dir, folder)
    issue(folder / "cert.pem", folder / "key.pem")
    return load_kit(folder)


@pytest.fixture
def silo_kit(tmp_path: Path, authority: Authority) -> Kit:
    return write_silo_kit(
        tmp_path / "kit", authority, port=free_port(), storage=tmp_path / "storage"
    )


@dataclass
class Clock:
    """Unix time the endpoint sees; tests move it forward to make decisions lapse."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@dataclass
class Events:
    """An in-memory audit sink."""

    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def append(self, event: str, /, **data: Any) -> None:
        self.lines.append((event, data))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [data for name, data in self.lines if name == event]


@contextmanager
def running(kit: Kit, app: Any) -> Iterator[None]:
    """Serve ``app`` on the kit's approval address (mutual TLS) while the block runs."""
    server = uvicorn.Server(server_config(kit, app, log_level="warning"))
    thread = threading.Thread(target=server.run, name="approval-endpoint", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the endpoint did not start"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Endpoint:
    """A running endpoint: its kit, the clock it reads and the audit events it wrote."""

    kit: Kit
    clock: Clock
    events: Events


@contextmanager
def serving(kit: Kit) -> Iterator[Endpoint]:
    """The kit's endpoint, with a test clock and an in-memory audit, while the block runs."""
    clock, events = Clock(), Events()
    app = build_app(kit, audit=events, clock=clock)
    try:
        with running(kit, app):
            yield Endpoint(kit, clock, events)
    finally:
        app.state.queue.close()


@pytest.fixture
def endpoint(silo_kit: Kit) -> Iterator[Endpoint]:
    with serving(silo_kit) as served:
        yield served
