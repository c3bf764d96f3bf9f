"""Renewal: a participant makes new keys beside its kit, the CA signs, the kit swaps files.

The participant's kit (a copy of a provisioned one, on "its machine") and the CA's
workspace stand for two machines; only the renewal request and the reply travel between
them (through ``transfer``).
"""

from __future__ import annotations

import shutil
import ssl
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedsilo.api import client_ssl_context
from fedsilo.config import Kit, Role, cert_fingerprint, load_kit, open_workspace
from fedsilo.config._kit import write_atomic
from fedsilo.errors import ConfigError, ProvisioningError
from fedsilo.provisioning import _renew as renew_module
from fedsilo.provisioning import provision
from fedsilo.provisioning._casign import issued, sign_request
from fedsilo.provisioning._certs import key_fingerprint
from fedsilo.provisioning._enroll import load_request
from fedsilo.provisioning._renew import install_renewal, make_renewal, stage_reply

KIT_FILES = ("key.pem", "cert.pem", "approval.key", "approval.crt", "admin.key", "admin.crt")


@pytest.fixture
def ws(demo_spec: Path, tmp_path: Path) -> Path:
    return provision(demo_spec, tmp_path / "ca-machine" / "ws").root


def _machine_kit(ws: Path, tmp_path: Path, name: str) -> Path:
    """``name``'s kit as it lives on its own machine (a copy of the provisioned one)."""
    kit_dir = tmp_path / f"{name}-machine" / "kit"
    shutil.copytree(ws / "kits" / name, kit_dir)
    return kit_dir


def _send(path: Path, tmp_path: Path) -> Path:
    transfer = tmp_path / "transfer"
    transfer.mkdir(exist_ok=True)
    return Path(shutil.copy(path, transfer))


def _fp(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _pair_matches(kit_dir: Path, key: str, cert: str) -> bool:
    private = serialization.load_pem_private_key((kit_dir / key).read_bytes(), None)
    public = x509.load_pem_x509_certificate((kit_dir / cert).read_bytes()).public_key()
    return key_fingerprint(private.public_key()) == key_fingerprint(public)  # type: ignore[arg-type]


def _renewed(ws: Path, tmp_path: Path, kit_dir: Path) -> Path:
    """Request a renewal for ``kit_dir`` and have the CA sign it; returns the reply."""
    made = make_renewal(kit_dir)
    return sign_request(_send(made.request_file, tmp_path), ws).reply_file


def test_a_silo_renews_every_key_of_its_kit(ws: Path, tmp_path: Path) -> None:
    kit_dir = _machine_kit(ws, tmp_path, "silo-a")
    before = {name: (kit_dir / name).read_bytes() for name in (*KIT_FILES, "kit.yaml")}
    old = _fp(kit_dir / "cert.pem")
    made = make_renewal(kit_dir)
    staging = kit_dir / "renewal"
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    for key in made.key_files:
        assert key.parent == staging and stat.S_IMODE(key.stat().st_mode) == 0o600
    # the kit in use is untouched
    assert {name: (kit_dir / name).read_bytes() for name in before} == before
    request = load_request(made.request_file)
    kit = load_kit(kit_dir)
    assert (request.name, request.role, request.federation) == ("silo-a", Role.SILO, "demo")
    assert (request.compute, request.approval_host, request.approval_port) == (
        "silo-a-cpu",
        kit.approval_host,
        kit.approval_port,
    )
    assert request.ca_fingerprint == _fp(kit_dir / "ca.crt")
    assert request.renews is not None
    assert request.renews.fingerprints == {
        "main": old,
        "approval": _fp(kit_dir / "approval.crt"),
        "admin": _fp(kit_dir / "admin.crt"),
    }
    assert b"PRIVATE KEY" not in made.request_file.read_bytes()
    # a second renewal while one is under way is refused, naming the folder
    with pytest.raises(ConfigError, match="a renewal of 'silo-a' is under way"):
        make_renewal(kit_dir)

    signed = sign_request(_send(made.request_file, tmp_path), ws)
    assert signed.reply.renews == old
    entry = issued(open_workspace(ws))[-1]
    assert (entry.name, entry.role, entry.renews) == ("silo-a", Role.SILO, old)
    # nothing private reached the CA's machine or travelled
    for sent in (tmp_path / "transfer").iterdir():
        assert b"PRIVATE KEY" not in sent.read_bytes(), sent
    assert [p.name for p in (ws / "ca").iterdir() if b"PRIVATE" in p.read_bytes()] == ["ca.key"]

    installed = install_renewal(stage_reply(signed.reply_file, kit_dir))
    assert installed.name == "silo-a"
    for name in KIT_FILES:
        assert (kit_dir / name).read_bytes() != before[name], name
    assert _fp(kit_dir / "cert.pem") == signed.issued.fingerprint != old
    assert all(
        _pair_matches(kit_dir, k, c)
        for k, c in (("key.pem", "cert.pem"), ("approval.key", "approval.crt"))
    )
    assert _pair_matches(kit_dir, "admin.key", "admin.crt")
    assert stat.S_IMODE((kit_dir / "key.pem").stat().st_mode) == 0o600
    assert (kit_dir / "kit.yaml").read_bytes() == before["kit.yaml"]
    assert (kit_dir / "policy.yaml").is_file()
    assert not staging.exists() and not list(kit_dir.glob("*.previous"))
    assert isinstance(client_ssl_context(installed), ssl.SSLContext)


def test_a_submitter_renews_and_keeps_its_code_signing_key(ws: Path, tmp_path: Path) -> None:
    kit_dir = _machine_kit(ws, tmp_path, "submitter")
    signing = (kit_dir / "signing.key").read_bytes()
    made = make_renewal(kit_dir)
    request = load_request(made.request_file)
    pub = (kit_dir / "signing.key.pub").read_text().split()[1]
    assert request.signing_key is not None and request.signing_key.split()[1] == pub
    assert [p.name for p in made.key_files] == ["key.pem"]
    signed = sign_request(_send(made.request_file, tmp_path), ws)
    kit = install_renewal(stage_reply(signed.reply_file, kit_dir))
    assert kit.role is Role.SUBMITTER and (kit_dir / "signing.key").read_bytes() == signing
    assert _pair_matches(kit_dir, "key.pem", "cert.pem")


def _spec(ws: Path) -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((ws / "federation.yaml").read_text())
    return data


def test_a_renewal_for_a_name_the_workspace_lacks_is_refused(ws: Path, tmp_path: Path) -> None:
    kit_dir = _machine_kit(ws, tmp_path, "silo-b")
    sent = _send(make_renewal(kit_dir).request_file, tmp_path)
    spec = _spec(ws)
    spec["silos"] = [s for s in spec["silos"] if s["name"] != "silo-b"]  # type: ignore[attr-defined]
    (ws / "federation.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="has no participant 'silo-b'") as exc:
        sign_request(sent, ws)
    assert exc.value.file == str(sent)


def test_a_renewal_in_another_role_is_refused(ws: Path, tmp_path: Path) -> None:
    kit_dir = _machine_kit(ws, tmp_path, "submitter")
    sent = _send(make_renewal(kit_dir).request_file, tmp_path)
    spec = _spec(ws)
    spec["submitters"] = []
    spec["admins"] = ["submitter"]
    (ws / "federation.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"'submitter' is a admin .* asks for a submitter"):
        sign_request(sent, ws)


def test_a_tampered_renewal_is_refused(ws: Path, tmp_path: Path) -> None:
    kit_dir = _machine_kit(ws, tmp_path, "silo-a")
    sent = _send(make_renewal(kit_dir).request_file, tmp_path)
    text = sent.read_text()
    port = str(load_kit(kit_dir).approval_port)
    sent.write_text(text.replace(f"approval_port: {port}", "approval_port: 9999"))
    with pytest.raises(ConfigError, match="the signature by its current key does not verify"):
        sign_request(sent, ws)
    # a certificate of another participant, named as the one renewed
    other = (ws / "kits" / "silo-b" / "cert.pem").read_text()
    data = yaml.safe_load(text)
    data["renews"]["certificate"] = other
    sent.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="it renews names OU=silo,O=demo,CN=silo-b"):
        sign_request(sent, ws)
    assert not (sent.parent / "silo-a.reply.yaml").exists()


def test_a_reply_for_other_keys_or_another_kit_is_refused(ws: Path, tmp_path: Path) -> None:
    kit_dir = _machine_kit(ws, tmp_path, "silo-a")
    first = _renewed(ws, tmp_path, kit_dir)
    kept = tmp_path / "first.reply.yaml"
    shutil.copy(first, kept)
    shutil.rmtree(kit_dir / "renewal")
    make_renewal(kit_dir)  # new keys: the first reply is for keys that are gone
    with pytest.raises(ConfigError, match=r"is not for this folder's key key\.pem"):
        stage_reply(kept, kit_dir)
    other = _renewed(ws, tmp_path, _machine_kit(ws, tmp_path, "silo-b"))
    with pytest.raises(ConfigError, match="the reply is for silo 'silo-b'"):
        stage_reply(other, kit_dir)
    assert (kit_dir / "renewal").is_dir()  # nothing installed, the staged keys wait
    assert _pair_matches(kit_dir, "key.pem", "cert.pem")


def test_an_install_stopped_half_way_is_refused_then_finished(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit_dir = _machine_kit(ws, tmp_path, "silo-a")
    old = _fp(kit_dir / "cert.pem")
    reply = _renewed(ws, tmp_path, kit_dir)
    written = 0
    real = write_atomic

    def crash_on_the_third(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        nonlocal written
        if path.parent == kit_dir:
            written += 1
            if written == 3:
                raise OSError("disk full")
        real(path, data, mode=mode)

    monkeypatch.setattr(renew_module, "write_atomic", crash_on_the_third)
    with pytest.raises(ProvisioningError, match="installed only in part"):
        install_renewal(stage_reply(reply, kit_dir))
    monkeypatch.undo()
    # the kit holds a new key and certificate and old ones: it is refused, saying what to do
    with pytest.raises(ConfigError, match="stopped half-way") as exc:
        load_kit(kit_dir)
    assert "fedsilo certs install" in str(exc.value)
    assert (kit_dir / "cert.pem.previous").is_file()
    kit: Kit = install_renewal(stage_reply(reply, kit_dir))
    assert _fp(kit.cert_file) != old
    for key, cert in (("key.pem", "cert.pem"), ("approval.key", "approval.crt")):
        assert _pair_matches(kit_dir, key, cert)
    assert _pair_matches(kit_dir, "admin.key", "admin.crt")
    assert not list(kit_dir.glob("*.previous")) and not (kit_dir / "renewal").exists()


def test_the_cli_renews_signs_and_installs(ws: Path, tmp_path: Path) -> None:
    from fedsilo.cli._app import _register, app

    _register()
    runner = CliRunner()
    kit_dir = _machine_kit(ws, tmp_path, "silo-a")
    old = _fp(kit_dir / "cert.pem")
    made = runner.invoke(app, ["certs", "renew", "--kit", str(kit_dir)])
    assert made.exit_code == 0, made.output
    request = kit_dir / "renewal" / "silo-a.renewal.yaml"
    assert str(request) in made.output.replace("\n", "")
    sent = _send(request, tmp_path)
    signed = runner.invoke(app, ["ca", "sign", str(sent), "-w", str(ws), "--yes"])
    assert signed.exit_code == 0, signed.output
    assert "silo 'silo-a' (federation.yaml)" in signed.output
    assert old[:40] in signed.output  # the certificate it renews, for the operator to compare
    assert "members renew silo-a" in signed.output.replace("\n", "")
    reply = sent.with_name("silo-a.reply.yaml")
    done = runner.invoke(
        app, ["certs", "install", str(reply), "--kit", str(kit_dir), "--unchecked"]
    )
    assert done.exit_code == 0, done.output
    flat = done.output.replace("\n", " ")
    assert "systemctl restart fedsilo-silo-a-agent" in flat
    assert f"members revoke silo-a --fingerprint {old[:16]}" in flat
    assert _fp(kit_dir / "cert.pem") != old
