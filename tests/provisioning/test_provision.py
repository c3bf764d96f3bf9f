"""Provisioning: the CA, one kit per participant holding only what it may know."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsilo.config import Role, cert_fingerprint, load_kit, open_workspace
from fedsilo.errors import ConfigError, ProvisioningError, WorkspaceError
from fedsilo.provisioning import _provision as provision_module
from fedsilo.provisioning import provision
from tests.config.conftest import DEMO_SPEC

PARTICIPANTS = {
    "orchestrator": Role.ORCHESTRATOR,
    "silo-a": Role.SILO,
    "silo-b": Role.SILO,
    "submitter": Role.SUBMITTER,
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture
def workspace_dir(demo_spec: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ws"
    provision(demo_spec, out)
    return out


def test_layout_and_key_modes(workspace_dir: Path) -> None:
    assert (workspace_dir / "federation.yaml").is_file()
    assert _mode(workspace_dir / "ca" / "ca.key") == 0o600
    assert sorted(p.name for p in (workspace_dir / "kits").iterdir()) == sorted(PARTICIPANTS)
    common = ["ca.crt", "cert.pem", "key.pem", "kit.yaml"]
    extra = {
        "silo": ["admin.crt", "admin.key", "approval.crt", "approval.key", "policy.yaml"],
        "submitter": ["signing.key", "signing.key.pub"],
        "orchestrator": [],
    }
    for name, role in PARTICIPANTS.items():
        kit_dir = workspace_dir / "kits" / name
        assert sorted(p.name for p in kit_dir.iterdir()) == sorted(common + extra[role])
        for private in ("key.pem", "admin.key", "approval.key", "signing.key"):
            if (kit_dir / private).exists():
                assert _mode(kit_dir / private) == 0o600, kit_dir / private
    for root in ("orchestrator", "silo-a", "silo-b"):
        assert _mode(workspace_dir / "storage" / root) == 0o700


def test_no_kit_holds_the_ca_key_or_another_participants_key(workspace_dir: Path) -> None:
    kits = workspace_dir / "kits"
    ca_key = (workspace_dir / "ca" / "ca.key").read_bytes()
    private = ("key.pem", "admin.key", "approval.key", "signing.key")
    keys = {
        (name, file): (kits / name / file).read_bytes()
        for name in PARTICIPANTS
        for file in private
        if (kits / name / file).exists()
    }
    assert len(set(keys.values())) == len(keys)
    for name in PARTICIPANTS:
        for path in _files(kits / name):
            content = path.read_bytes()
            assert ca_key not in content, path
            for (other, file), key in keys.items():
                if other != name:
                    assert key not in content, f"{other}'s {file} found in {path}"


def test_orchestrator_kit_holds_no_silo_storage_path(workspace_dir: Path) -> None:
    workspace = open_workspace(workspace_dir)
    silo_roots = [workspace.kit(name).storage_root for name in workspace.silo_names]
    assert all(silo_roots)
    orchestrator_dir = workspace.kit_dir("orchestrator")
    texts = [p.read_bytes().decode("utf-8", "replace") for p in _files(orchestrator_dir)]
    for root in silo_roots:
        assert root is not None
        assert not any(root in text for text in texts)
        assert not any("storage/silo-" in text for text in texts)
    kit = workspace.kit("orchestrator")
    assert [(s.name, s.compute) for s in kit.silos] == [
        ("silo-a", "silo-a-cpu"),
        ("silo-b", "silo-b-cpu"),
    ]
    assert kit.silo is None


def test_certificates_chain_to_the_ca_with_name_role_and_usage(workspace_dir: Path) -> None:
    ca = _cert(workspace_dir / "ca" / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    years = (ca.not_valid_after_utc - ca.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1
    for name, role in PARTICIPANTS.items():
        kit_dir = workspace_dir / "kits" / name
        cert = _cert(kit_dir / "cert.pem")
        cert.verify_directly_issued_by(ca)
        assert _cert(kit_dir / "ca.crt") == ca
        subject = cert.subject
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == role
        assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "demo"
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        expected = {ExtendedKeyUsageOID.CLIENT_AUTH}
        if role is Role.ORCHESTRATOR:
            expected.add(ExtendedKeyUsageOID.SERVER_AUTH)
        assert usages == expected
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        key = serialization.load_pem_private_key((kit_dir / "key.pem").read_bytes(), None)
        assert key.public_key() == cert.public_key()
        years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
        assert 1.9 < years < 2.1


def test_orchestrator_certificate_names_its_host(tmp_path: Path) -> None:
    spec = tmp_path / "fed.yaml"
    text = DEMO_SPEC
    spec.write_text(text.replace("host: 127.0.0.1", "host: orchestrator.example.org"))
    workspace = provision(spec, tmp_path / "ws")
    cert = _cert(workspace.kit("orchestrator").cert_file)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "orchestrator.example.org"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert workspace.kit("silo-a").orchestrator_url == "https://orchestrator.example.org:8443"


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """Run a TLS handshake in memory; return the server's side once both are done."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    client_side = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"server": False, "client": False}
    for _ in range(20):
        for label, side in (("client", client_side), ("server", server_side)):
            if not done[label]:
                try:
                    side.do_handshake()
                    done[label] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            client_side.write(b"ping")
            s_in.write(c_out.read())
            assert server_side.read(4) == b"ping"
            return server_side
    raise AssertionError("handshake did not finish")


def test_kits_give_mutual_tls_between_silo_and_orchestrator(workspace_dir: Path) -> None:
    workspace = open_workspace(workspace_dir)
    orchestrator, silo = workspace.kit("orchestrator"), workspace.kit("silo-a")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(orchestrator.cert_file, orchestrator.key_file)
    server.load_verify_locations(orchestrator.ca_file)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(silo.ca_file)
    client.load_cert_chain(silo.cert_file, silo.key_file)
    server_side = _handshake(server, client)
    peer = server_side.getpeercert(binary_form=True)
    assert peer is not None
    assert cert_fingerprint(peer) == orchestrator.participant("silo-a").fingerprint


def test_kit_files_and_fields(workspace_dir: Path) -> None:
    silo = load_kit(workspace_dir / "kits" / "silo-a")
    assert silo.role is Role.SILO
    assert silo.kit_dir == (workspace_dir / "kits" / "silo-a").absolute()
    assert silo.key_file == silo.kit_dir / "key.pem"
    assert silo.storage_root == str(workspace_dir / "storage" / "silo-a")
    assert silo.silo is not None and silo.silo.storage.root == silo.storage_root
    assert silo.silos == () and silo.participants == ()
    assert "kit_dir" not in (silo.kit_dir / "kit.yaml").read_text()
    submitter = load_kit(workspace_dir / "kits" / "submitter")
    assert submitter.storage_root is None and submitter.silo is None
    orchestrator = load_kit(workspace_dir / "kits" / "orchestrator")
    assert orchestrator.orchestrator_url == "https://127.0.0.1:8443"
    assert {p.name: p.role for p in orchestrator.participants} == PARTICIPANTS
    for info in orchestrator.participants:
        der = _cert(workspace_dir / "kits" / info.name / "cert.pem").public_bytes(
            serialization.Encoding.DER
        )
        assert info.fingerprint == cert_fingerprint(der)


def test_a_tampered_kit_is_a_config_error(workspace_dir: Path) -> None:
    kit_file = workspace_dir / "kits" / "silo-b" / "kit.yaml"
    kit_file.write_text(kit_file.read_text() + "secret_path: /data\n")
    with pytest.raises(ConfigError, match="unknown key 'secret_path'") as caught:
        load_kit(kit_file.parent)
    assert caught.value.file == str(kit_file)
    with pytest.raises(ConfigError, match="no such kit folder"):
        load_kit(workspace_dir / "kits" / "nobody")


def test_workspace_lookups(workspace_dir: Path) -> None:
    workspace = open_workspace(workspace_dir)
    assert workspace.silo_names == ("silo-a", "silo-b")
    assert workspace.submitter_name == "submitter"
    assert workspace.logs_dir == workspace_dir / "logs"
    assert workspace.run_dir == workspace_dir / "run"
    assert workspace.kit("silo-b").name == "silo-b"
    with pytest.raises(ConfigError, match=r"no participant 'silo-z'.*orchestrator, silo-a"):
        workspace.kit("silo-z")


def test_open_workspace_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match=r"fedsilo provision federation\.yaml --out DIR"):
        open_workspace(tmp_path)


def test_refuses_an_existing_workspace_without_force(demo_spec: Path, workspace_dir: Path) -> None:
    before = (workspace_dir / "ca" / "ca.crt").read_bytes()
    with pytest.raises(ProvisioningError, match="--force"):
        provision(demo_spec, workspace_dir)
    assert (workspace_dir / "ca" / "ca.crt").read_bytes() == before


def test_force_replaces_ca_and_kits_and_keeps_storage(demo_spec: Path, workspace_dir: Path) -> None:
    data = workspace_dir / "storage" / "silo-a" / "keep.csv"
    data.write_text("1,2,3\n")
    old_ca = (workspace_dir / "ca" / "ca.crt").read_bytes()
    old_key = (workspace_dir / "kits" / "silo-a" / "key.pem").read_bytes()
    provision(demo_spec, workspace_dir, force=True)
    assert data.read_text() == "1,2,3\n"
    assert (workspace_dir / "ca" / "ca.crt").read_bytes() != old_ca
    assert (workspace_dir / "kits" / "silo-a" / "key.pem").read_bytes() != old_key
    ca = _cert(workspace_dir / "ca" / "ca.crt")
    _cert(workspace_dir / "kits" / "silo-a" / "cert.pem").verify_directly_issued_by(ca)
    assert not [p for p in workspace_dir.parent.iterdir() if p.name.startswith(".fedsilo")]


def test_a_failure_leaves_nothing_half_written(
    demo_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = provision_module._make_cert
    calls = []

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(provision_module, "_make_cert", failing)
    out = tmp_path / "ws"
    with pytest.raises(ProvisioningError, match="disk full"):
        provision(demo_spec, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec0"]


def test_a_failed_force_keeps_the_old_kits(
    demo_spec: Path, workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_key = (workspace_dir / "kits" / "silo-b" / "key.pem").read_bytes()

    def failing(*args: object, **kwargs: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(provision_module, "_make_cert", failing)
    with pytest.raises(ProvisioningError):
        provision(demo_spec, workspace_dir, force=True)
    assert (workspace_dir / "kits" / "silo-b" / "key.pem").read_bytes() == old_key


def test_absolute_storage_root_outside_the_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "silo-b-data"
    text = DEMO_SPEC
    spec = tmp_path / "fed.yaml"
    spec.write_text(text.replace("{root: storage/silo-b}", f"{{root: {outside}}}"))
    workspace = provision(spec, tmp_path / "ws")
    assert workspace.kit("silo-b").storage_root == str(outside)
    assert outside.is_dir() and _mode(outside) == 0o700


def test_storage_root_must_not_overlap_the_workspace_files(tmp_path: Path) -> None:
    text = DEMO_SPEC
    spec = tmp_path / "fed.yaml"
    spec.write_text(text.replace("{root: storage/silo-b}", "{root: kits/silo-b-data}"))
    with pytest.raises(ConfigError, match="overlaps the workspace") as caught:
        provision(spec, tmp_path / "ws")
    assert caught.value.file == str(spec)
    assert not (tmp_path / "ws").exists()


def test_storage_roots_that_meet_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    text = DEMO_SPEC
    text = text.replace("{root: storage/silo-a}", f"{{root: {real}}}")
    text = text.replace("{root: storage/silo-b}", f"{{root: {tmp_path / 'link'}}}  #!")
    spec = tmp_path / "fed.yaml"
    spec.write_text(text)
    with pytest.raises(ConfigError, match="is the same folder as") as caught:
        provision(spec, tmp_path / "ws")
    marked = next(i for i, line in enumerate(text.splitlines(), 1) if "#!" in line)
    assert (caught.value.field, caught.value.line) == ("silos.1.storage.root", marked)


def test_a_failure_while_moving_into_place_restores_the_old_workspace(
    demo_spec: Path, workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_key = (workspace_dir / "kits" / "silo-a" / "key.pem").read_bytes()
    old_ca = (workspace_dir / "ca" / "ca.crt").read_bytes()
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.parent.name == "new" and self.name == "kits":
            raise OSError("device busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ProvisioningError, match="device busy"):
        provision(demo_spec, workspace_dir, force=True)
    monkeypatch.undo()
    assert (workspace_dir / "kits" / "silo-a" / "key.pem").read_bytes() == old_key
    assert (workspace_dir / "ca" / "ca.crt").read_bytes() == old_ca
    assert open_workspace(workspace_dir).kit("silo-a").name == "silo-a"


def test_administrators_get_a_kit_of_their_own_or_share_a_submitter_s(tmp_path: Path) -> None:
    spec = tmp_path / "fed.yaml"
    text = DEMO_SPEC
    spec.write_text(text + "admins: [carol, submitter]\n")
    workspace = provision(spec, tmp_path / "ws")
    carol = workspace.kit("carol")
    assert (carol.role, carol.storage_root) == (Role.ADMIN, None)
    assert not carol.signing_key_file.exists()  # an administrator signs no code
    assert (
        _cert(carol.cert_file)
        .subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0]
        .value
        == "admin"
    )
    people = {p.name: p for p in workspace.kit("orchestrator").participants}
    assert people["carol"].roles == {Role.ADMIN}
    assert people["submitter"].roles == {Role.SUBMITTER, Role.ADMIN}
    assert workspace.kit("submitter").role is Role.SUBMITTER  # one kit, both roles
    assert people["silo-a"].roles == {Role.SILO}


@pytest.mark.parametrize(
    ("admins", "problem"),
    [
        ("[silo-a]", "participant name 'silo-a' is used twice"),
        ("[carol, carol]", "admin 'carol' is listed twice"),
        ("[Carol]", "admins.0"),
    ],
)
def test_a_bad_administrator_is_refused_naming_the_field(
    tmp_path: Path, admins: str, problem: str
) -> None:
    spec = tmp_path / "fed.yaml"
    text = DEMO_SPEC
    spec.write_text(text + f"admins: {admins}\n")
    with pytest.raises(ConfigError, match=problem):
        provision(spec, tmp_path / "ws")
