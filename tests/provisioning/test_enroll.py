"""Enrollment: a participant makes its own keys, the CA signs its requests, the kit works.

The participant's folder and the CA's workspace stand for two machines; only the request
and the reply travel between them (through ``transfer``), and no private key does.
"""

from __future__ import annotations

import datetime as dt
import ssl
import stat
import types
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from fedsilo.approval import load_policy
from fedsilo.config import Kit, Role, cert_fingerprint, load_kit, open_workspace
from fedsilo.errors import ConfigError
from fedsilo.jobs import (
    SigningStatus,
    bundle_signature,
    check_signature,
    load_private_key,
    pack_bundle,
    parse_public_key,
    unpack_bundle,
)
from fedsilo.provisioning import _enroll as enroll_module
from fedsilo.provisioning import provision
from fedsilo.provisioning._casign import issued, review_request, sign_request
from fedsilo.provisioning._certs import subject_name
from fedsilo.provisioning._enroll import (
    finish_enrollment,
    load_request,
    make_request,
    reply_member,
    set_storage,
)

FEDERATION = "demo"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ws(demo_spec: Path, tmp_path: Path) -> Path:
    return provision(demo_spec, tmp_path / "ca-machine" / "ws").root


def _request(tmp_path: Path, name: str, role: Role, **facts: object) -> Path:
    """Make ``name``'s request on its machine; return the request as sent (a copy)."""
    kit_dir = tmp_path / f"{name}-machine" / "kit"
    if role is Role.SILO and "compute" not in facts and "silo_spec" not in facts:
        facts["compute"] = f"{name}-cpu"
    made = make_request(kit_dir, federation=FEDERATION, name=name, role=role, **facts)  # type: ignore[arg-type]
    transfer = tmp_path / "transfer"
    transfer.mkdir(exist_ok=True)
    sent = transfer / made.request_file.name
    sent.write_bytes(made.request_file.read_bytes())
    return sent


def _enroll(ws: Path, tmp_path: Path, name: str, role: Role, **facts: object) -> Kit:
    """The whole round trip: request, sign on the CA's machine, finish on its own."""
    sent = _request(tmp_path, name, role, **facts)
    signed = sign_request(sent, ws)
    storage = tmp_path / f"{name}-machine" / "data" if role is not Role.SUBMITTER else None
    if role is Role.ADMIN:
        storage = None
    return finish_enrollment(
        signed.reply_file, tmp_path / f"{name}-machine" / "kit", storage=storage
    )


def test_a_silo_enrolls_with_keys_that_never_left_its_machine(ws: Path, tmp_path: Path) -> None:
    sent = _request(tmp_path, "silo-d", Role.SILO, approval_port=9450)
    kit_dir = tmp_path / "silo-d-machine" / "kit"
    keys = {
        name: (kit_dir / name).read_bytes() for name in ("key.pem", "approval.key", "admin.key")
    }
    for name in keys:
        assert stat.S_IMODE((kit_dir / name).stat().st_mode) == 0o600
    review = review_request(sent, ws)
    assert review.request.name == "silo-d" and review.request.role is Role.SILO
    assert set(review.key_fingerprints) == {"main", "approval", "admin"}
    signed = sign_request(sent, ws)
    kit = finish_enrollment(signed.reply_file, kit_dir, storage=Path("rel-data"))

    assert kit == load_kit(kit_dir)
    assert kit.role is Role.SILO and kit.federation == FEDERATION
    assert kit.storage_path == (Path.cwd() / "rel-data").absolute()
    assert stat.S_IMODE(kit.storage_path.stat().st_mode) == 0o700
    assert kit.silo is not None and kit.silo.compute.name == "silo-d-cpu"
    assert kit.approval_url == "https://127.0.0.1:9450"
    # the keys are the ones made on the silo's machine
    assert {name: (kit_dir / name).read_bytes() for name in keys} == keys
    ca = _cert(ws / "ca" / "ca.crt")
    provisioned = _cert(ws / "kits" / "silo-a" / "approval.crt")
    for cert_file, unit, cn in (
        ("cert.pem", "silo", "silo-d"),
        ("approval.crt", "approval", "silo-d-approval"),
        ("admin.crt", "admin", "silo-d-admin"),
    ):
        cert = _cert(kit_dir / cert_file)
        cert.verify_directly_issued_by(ca)
        assert cert.subject == subject_name(FEDERATION, cn, unit)
    approval = _cert(kit_dir / "approval.crt")
    assert [e.oid for e in approval.extensions] == [e.oid for e in provisioned.extensions]
    usage = approval.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    # each certificate goes with its key in a TLS context
    for cert_file, key_file in (("cert.pem", "key.pem"), ("approval.crt", "approval.key")):
        ssl.create_default_context().load_cert_chain(kit_dir / cert_file, kit_dir / key_file)
    # what the orchestrator is told of it
    pem, compute = reply_member(signed.reply_file)
    assert pem == (kit_dir / "cert.pem").read_text() and compute == "silo-d-cpu"
    (entry,) = issued(open_workspace(ws))
    assert (entry.name, entry.role, entry.computes) == ("silo-d", Role.SILO, ("silo-d-cpu",))


def test_a_submitter_signs_code_an_enrolled_silo_trusts(ws: Path, tmp_path: Path) -> None:
    bob = _enroll(ws, tmp_path, "bob", Role.SUBMITTER)
    assert bob.role is Role.SUBMITTER and bob.storage_root is None
    assert stat.S_IMODE(bob.signing_key_file.stat().st_mode) == 0o600
    silo = _enroll(ws, tmp_path, "silo-d", Role.SILO)
    policy = load_policy(silo.policy_file)
    # the provisioned submitter and the enrolled one
    assert set(policy.trusted_keys) == {"submitter", "bob"}
    code = tmp_path / "code"
    code.mkdir()
    (code / "task.py").write_text("x = 1\n")
    packed, manifest = pack_bundle(code, signing_key=load_private_key(bob.signing_key_file))
    unpacked = tmp_path / "unpacked"
    unpack_bundle(packed, unpacked)
    trusted = {n: parse_public_key(line) for n, line in policy.trusted_keys.items()}
    check = check_signature(manifest.digest, bundle_signature(unpacked), trusted)
    assert (check.status, check.key_name) == (SigningStatus.TRUSTED, "bob")


def test_an_administrator_enrolls(ws: Path, tmp_path: Path) -> None:
    carol = _enroll(ws, tmp_path, "carol", Role.ADMIN)
    assert carol.role is Role.ADMIN and carol.storage_root is None
    assert not carol.signing_key_file.exists()
    _cert(carol.cert_file).verify_directly_issued_by(_cert(ws / "ca" / "ca.crt"))


def test_the_orchestrator_enrolls_and_knows_every_participant(ws: Path, tmp_path: Path) -> None:
    silo = _enroll(ws, tmp_path, "silo-d", Role.SILO)
    orchestrator = _enroll(ws, tmp_path, "orchestrator", Role.ORCHESTRATOR, host="orch.example")
    names = {p.name for p in orchestrator.participants}
    assert names == {"orchestrator", "silo-a", "silo-b", "submitter", "silo-d"}
    assert [s.name for s in orchestrator.silos] == ["silo-a", "silo-b", "silo-d"]
    cert = _cert(orchestrator.cert_file)
    assert orchestrator.participant("orchestrator").fingerprint == cert_fingerprint(
        cert.public_bytes(serialization.Encoding.DER)
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert x509.DNSName("orch.example") in san
    assert silo.name in names
    with pytest.raises(ConfigError, match="'orchestrator' is taken"):
        sign_request(_request(tmp_path / "again", "orchestrator", Role.ORCHESTRATOR, host="x"), ws)


def test_the_ca_machine_never_holds_a_participant_key(ws: Path, tmp_path: Path) -> None:
    provisioned = {p for p in ws.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()}
    kits = [
        _enroll(ws, tmp_path, name, role)
        for name, role in (("silo-d", Role.SILO), ("bob", Role.SUBMITTER), ("carol", Role.ADMIN))
    ]
    # what the CA's machine held, and what travelled, holds no new private key
    ca_side = [p for p in (*ws.rglob("*"), *(tmp_path / "transfer").iterdir()) if p.is_file()]
    holding = {p for p in ca_side if b"PRIVATE KEY" in p.read_bytes()}
    assert holding == provisioned
    assert all(p == ws / "ca" / "ca.key" or (ws / "kits") in p.parents for p in holding)
    participant_keys = [
        (kit.kit_dir / name).read_bytes()
        for kit in kits
        for name in ("key.pem", "approval.key", "admin.key", "signing.key")
        if (kit.kit_dir / name).exists()
    ]
    assert len(participant_keys) == 6  # silo 3, submitter 2, administrator 1
    body = b"".join(p.read_bytes() for p in ca_side)
    for key in participant_keys:
        inner = b"".join(key.splitlines()[1:-1])
        assert inner[24:64] not in body.replace(b"\n", b"")  # past the fixed header


def test_a_request_for_another_federation_is_refused(ws: Path, tmp_path: Path) -> None:
    sent = _request(tmp_path, "silo-d", Role.SILO)
    text = sent.read_text().replace("federation: demo", "federation: other")
    sent.write_text(text)
    with pytest.raises(ConfigError) as exc:
        review_request(sent, ws)
    assert "the request of 'silo-d' is for federation 'other'" in str(exc.value)
    assert "--federation demo" in str(exc.value)


def _resign_main(sent: Path, kit_dir: Path, unit: str) -> None:
    """Replace the request's main CSR by one the same key signed for role ``unit``."""
    data = yaml.safe_load(sent.read_text())
    key = serialization.load_pem_private_key((kit_dir / "key.pem").read_bytes(), None)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name(FEDERATION, data["name"], unit))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    data["csrs"]["main"] = csr.public_bytes(serialization.Encoding.PEM).decode()
    sent.write_text(yaml.safe_dump(data))


def test_a_request_signed_for_another_role_is_refused(ws: Path, tmp_path: Path) -> None:
    sent = _request(tmp_path, "carol", Role.ADMIN)
    _resign_main(sent, tmp_path / "carol-machine" / "kit", "orchestrator")
    with pytest.raises(ConfigError) as exc:
        sign_request(sent, ws)
    message = str(exc.value)
    assert "the request of 'carol'" in message and "asks for role 'orchestrator'" in message
    assert "--role admin" in message
    assert issued(open_workspace(ws)) == ()


def test_a_name_already_taken_is_refused(ws: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"the name 'silo-a' is taken.*silo 'silo-a' of federation"
    ):
        review_request(_request(tmp_path, "silo-a", Role.SILO, compute="new-cpu"), ws)
    _enroll(ws, tmp_path / "first", "bob", Role.SUBMITTER)
    with pytest.raises(ConfigError, match=r"the name 'bob' is taken.*enrolled on .*another name"):
        review_request(_request(tmp_path / "second", "bob", Role.ADMIN), ws)
    with pytest.raises(ConfigError, match="compute 'silo-b-cpu' belongs to silo 'silo-b'"):
        review_request(_request(tmp_path, "silo-e", Role.SILO, compute="silo-b-cpu"), ws)


def test_a_tampered_request_is_refused(ws: Path, tmp_path: Path) -> None:
    sent = _request(tmp_path, "silo-d", Role.SILO)
    data = yaml.safe_load(sent.read_text())
    csr = x509.load_pem_x509_csr(data["csrs"]["approval"].encode())
    der = csr.public_bytes(serialization.Encoding.DER).replace(
        b"silo-d-approval", b"silo-x-approval"
    )
    tampered = x509.load_der_x509_csr(der)
    assert (
        tampered.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "silo-x-approval"
    )
    data["csrs"]["approval"] = tampered.public_bytes(serialization.Encoding.PEM).decode()
    sent.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="signature of its approval request does not verify"):
        sign_request(sent, ws)


def test_a_reply_from_another_ca_is_refused(ws: Path, demo_spec: Path, tmp_path: Path) -> None:
    other = provision(demo_spec, tmp_path / "other-ca" / "ws").root  # same federation name
    # a request pinned to its CA is refused by another CA
    pinned = _request(tmp_path / "pinned", "silo-d", Role.SILO, ca_file=ws / "ca" / "ca.crt")
    assert load_request(pinned).ca_fingerprint is not None
    with pytest.raises(ConfigError, match="expects the CA whose certificate has sha256"):
        review_request(pinned, other)
    # a kit refuses a reply of another CA than its own
    sent = _request(tmp_path, "silo-d", Role.SILO)
    kit_dir = tmp_path / "silo-d-machine" / "kit"
    finish_enrollment(sign_request(sent, ws).reply_file, kit_dir, storage=tmp_path / "d")
    foreign = sign_request(sent, other, to=tmp_path / "foreign.reply.yaml").reply_file
    with pytest.raises(ConfigError) as exc:
        finish_enrollment(foreign, kit_dir, storage=tmp_path / "d")
    assert "the reply for silo 'silo-d'" in str(exc.value)
    assert f"the kit in {kit_dir} trusts another CA" in str(exc.value)
    _cert(kit_dir / "cert.pem").verify_directly_issued_by(_cert(ws / "ca" / "ca.crt"))


def test_a_reply_to_another_request_or_expired_is_refused(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed = sign_request(_request(tmp_path, "silo-d", Role.SILO), ws)
    stranger = tmp_path / "stranger"
    make_request(stranger, federation=FEDERATION, name="silo-d", role=Role.SILO, compute="c")
    with pytest.raises(ConfigError, match=r"is not for this folder's key key\.pem"):
        finish_enrollment(signed.reply_file, stranger, storage=tmp_path / "s")
    kit_dir = tmp_path / "silo-d-machine" / "kit"
    with pytest.raises(ConfigError, match="choose the folder with --storage PATH"):
        finish_enrollment(signed.reply_file, kit_dir)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Later:
            return super().now(tz) + dt.timedelta(days=3 * 365)

    monkeypatch.setattr(enroll_module, "dt", types.SimpleNamespace(datetime=Later, UTC=dt.UTC))
    with pytest.raises(ConfigError, match=r"'main' of silo 'silo-d' .* it has expired"):
        finish_enrollment(signed.reply_file, kit_dir, storage=tmp_path / "s")
    assert not (kit_dir / "kit.yaml").exists()


def test_a_silo_spec_gives_datasets_storage_and_policy(ws: Path, tmp_path: Path) -> None:
    here = tmp_path / "silo-d-machine"
    here.mkdir()
    policy = ws / "kits" / "silo-a" / "policy.yaml"
    (here / "silo.yaml").write_text(
        "storage: {root: store}\n"
        "compute: {name: silo-d-cpu, kind: cpu}\n"
        "computes: [{name: silo-d-gpu, kind: gpu, gpus: [0]}]\n"
        "datasets: [{name: notes, classification: sensitive}]\n"
        "approval: {port: 9461}\n"
        f"policy: {policy}\n"
    )
    sent = _request(tmp_path, "silo-d", Role.SILO, silo_spec=here / "silo.yaml")
    asked = load_request(sent)
    assert (asked.compute, asked.computes, asked.approval_port) == (
        "silo-d-cpu",
        ("silo-d-gpu",),
        9461,
    )
    reply = sign_request(sent, ws).reply_file
    kit = finish_enrollment(reply, here / "kit")
    assert kit.storage_path == here / "store"
    assert kit.silo is not None and kit.silo.dataset("notes") is not None
    assert [c.name for c in kit.silo.all_computes()] == ["silo-d-cpu", "silo-d-gpu"]
    assert kit.policy_file.read_text() == policy.read_text()
    assert not (here / "kit" / "pending-silo.yaml").exists()
    with pytest.raises(
        ConfigError, match="compute 'silo-d-gpu' belongs to silo 'silo-d', enrolled on"
    ):
        review_request(_request(tmp_path / "x", "silo-e", Role.SILO, compute="silo-d-gpu"), ws)


def test_a_kits_storage_root_is_set_on_its_own_machine(ws: Path, tmp_path: Path) -> None:
    moved, old = set_storage(ws / "kits" / "silo-a", tmp_path / "silo-a-own")
    assert old == ws / "storage" / "silo-a"
    again = load_kit(ws / "kits" / "silo-a")
    assert again.storage_path == tmp_path / "silo-a-own" == moved.storage_path
    assert again.silo is not None and again.silo.storage.root == str(tmp_path / "silo-a-own")
    assert stat.S_IMODE((tmp_path / "silo-a-own").stat().st_mode) == 0o700
    with pytest.raises(ConfigError, match="it keeps no data"):
        set_storage(ws / "kits" / "submitter", tmp_path / "x")
    with pytest.raises(ConfigError, match="is a folder of the operating system"):
        set_storage(ws / "kits" / "silo-a", Path("/etc"))


def test_signing_asks_first_and_refuses_without_a_terminal(ws: Path, tmp_path: Path) -> None:
    import typer

    from fedsilo.cli import _enroll as cli

    app = typer.Typer()
    cli.register(app)
    sent = _request(tmp_path, "silo-d", Role.SILO)
    runner = CliRunner()
    refused = runner.invoke(app, ["ca", "sign", str(sent), "-w", str(ws)])
    assert refused.exit_code == 1
    assert "silo-d" in refused.output and "main key sha256" in refused.output
    assert "no terminal to confirm on" in str(refused.exception)
    assert issued(open_workspace(ws)) == ()
    done = runner.invoke(app, ["ca", "sign", str(sent), "-w", str(ws), "--yes"])
    assert done.exit_code == 0, done.output
    assert (sent.parent / "silo-d.reply.yaml").is_file()
    assert [e.name for e in issued(open_workspace(ws))] == ["silo-d"]
