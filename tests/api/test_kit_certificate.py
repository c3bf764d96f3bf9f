"""A kit the orchestrator's TLS would turn away without a word is refused first, by name."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.api import OrchestratorClient
from fedsilo.config import load_kit
from fedsilo.errors import ConfigError
from fedsilo.provisioning import provision

SPEC = """name: {name}
orchestrator: {{host: 127.0.0.1, port: 7443, storage: {{root: s/o}}, compute: {{name: o}}}}
silos:
  - {{name: silo-a, storage: {{root: s/a}}, compute: {{name: a}}}}
submitters: [alice]
"""


def _workspace(tmp: Path, name: str) -> Path:
    (tmp / f"{name}.yaml").write_text(SPEC.format(name=name))
    provision(tmp / f"{name}.yaml", tmp / name)
    return tmp / name


def test_an_expired_certificate_is_named_with_what_to_do(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "fed")
    kit_dir = tmp_path / "alice"
    shutil.copytree(ws / "kits" / "alice", kit_dir)
    ca_cert = x509.load_pem_x509_certificate((ws / "ca" / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ws / "ca" / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = serialization.load_pem_private_key((kit_dir / "key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = x509.load_pem_x509_certificate((kit_dir / "cert.pem").read_bytes())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(past - dt.timedelta(days=30))
        .not_valid_after(past)
        .sign(ca_key, hashes.SHA256())
    )
    (kit_dir / "cert.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=r"certificate of 'alice' is valid from .* not now; ask"):
        OrchestratorClient(load_kit(kit_dir))


def test_a_kit_that_mixes_two_federations_is_refused(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "fed")
    other = _workspace(tmp_path, "other")
    kit_dir = tmp_path / "alice"
    shutil.copytree(ws / "kits" / "alice", kit_dir)
    shutil.copyfile(other / "ca" / "ca.crt", kit_dir / "ca.crt")
    with pytest.raises(ConfigError, match=r"not signed by the CA in ca\.crt: the kit mixes two"):
        OrchestratorClient(load_kit(kit_dir))
