"""Provisioning: one federation spec in, a CA and one kit per participant out.

The workspace is laid out as::

    OUT/federation.yaml        a copy of the spec
    OUT/ca/ca.crt, ca.key      the federation CA (its key is in no kit)
    OUT/kits/<name>/           cert.pem, key.pem (0600), ca.crt, kit.yaml
    OUT/kits/<silo>/           + approval.crt/.key (its approval endpoint), admin.crt/.key
                               (its administrator), policy.yaml (its approval policy)
    OUT/kits/<submitter>/      + signing.key (0600) and signing.key.pub (code signing)

The CA and kits are built in a temporary folder beside OUT and moved into place at the
end, so a failure leaves nothing half written. Storage roots are created (mode 0700) and
never emptied, not even with ``force``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.approval import default_policy_yaml, load_policy
from fedsilo.config._federation import (
    ORCHESTRATOR_NAME,
    FederationSpec,
    SiloSpec,
    load_federation,
)
from fedsilo.config._kit import (
    ADMIN_CERT_FILE,
    ADMIN_KEY_FILE,
    APPROVAL_CERT_FILE,
    APPROVAL_KEY_FILE,
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    POLICY_FILE,
    SIGNING_KEY_FILE,
    Kit,
    ParticipantInfo,
    Role,
    SiloInfo,
    cert_fingerprint,
    write_kit,
)
from fedsilo.config._workspace import FEDERATION_FILE, Workspace
from fedsilo.config._yamlio import FieldIssue, issue_error, load_yaml_mapping
from fedsilo.errors import ConfigError, ProvisioningError
from fedsilo.jobs import new_signing_key
from fedsilo.provisioning._certs import issue_certificate, make_ca, write_private_key

__all__ = ["provision"]

_PLACED = (FEDERATION_FILE, "ca", "kits")


def provision(spec_path: Path, out: Path, *, force: bool = False) -> Workspace:
    """Create the federation CA and one kit per participant of ``spec_path`` under ``out``.

    Refuses (:class:`ProvisioningError`) when ``out`` already holds a workspace, unless
    ``force``: then the CA, the kits and the spec copy are replaced and storage is kept.
    """
    spec_path = Path(spec_path)
    spec = load_federation(spec_path)
    out = Path(out).expanduser().resolve()
    existing = [name for name in _PLACED if (out / name).exists()]
    if existing and not force:
        raise ProvisioningError(
            f"{out} already holds a workspace ({', '.join(existing)}); pass --force to "
            "replace its CA and kits (storage data is kept)"
        )
    roots = _storage_roots(spec, spec_path, out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with _staging(out.parent) as stage:
            _build(spec, spec_path, stage, roots)
            _create_storage(roots, out, stage)
            _place(stage, out)
    except OSError as exc:
        raise ProvisioningError(f"cannot provision into {out}: {exc}") from exc
    return Workspace(root=out, federation=spec)


def _storage_roots(spec: FederationSpec, spec_path: Path, out: Path) -> dict[str, Path]:
    try:
        spec.check_storage_roots(out)
    except FieldIssue as issue:
        _, index = load_yaml_mapping(spec_path)
        raise issue_error(issue, spec_path, index) from None
    roots = {name: Path(root) for name, root in spec.storage_roots(out).items()}
    for name, root in roots.items():
        if (
            out == root
            or out.is_relative_to(root)
            or any(root.is_relative_to(out / part) for part in _PLACED)
        ):
            raise ConfigError(
                f"the storage root of '{name}' ({root}) overlaps the workspace's own files "
                f"in {out}; put it in a folder of its own",
                file=str(spec_path),
            )
    return roots


@contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    stage = Path(tempfile.mkdtemp(prefix=".fedsilo-provision-", dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _build(spec: FederationSpec, spec_path: Path, stage: Path, roots: dict[str, Path]) -> None:
    build = stage / "new"
    (build / "kits").mkdir(parents=True)
    shutil.copyfile(spec_path, build / FEDERATION_FILE)
    ca_key, ca_cert = make_ca(spec.name)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    ca_dir = build / "ca"
    ca_dir.mkdir(mode=0o700)
    (ca_dir / CA_FILE).write_bytes(ca_pem)
    write_private_key(ca_dir / "ca.key", ca_key)

    people = [(ORCHESTRATOR_NAME, Role.ORCHESTRATOR)]
    people += [(silo.name, Role.SILO) for silo in spec.silos]
    people += [(name, Role.SUBMITTER) for name in spec.submitters]
    people += [(name, Role.ADMIN) for name in spec.admin_only]
    participants: list[ParticipantInfo] = []
    for name, role in people:
        kit_dir = build / "kits" / name
        kit_dir.mkdir(mode=0o700)
        server = spec.orchestrator.host if role is Role.ORCHESTRATOR else None
        key, cert = _make_cert(spec, name, role.value, ca_key, ca_cert, server_host=server)
        (kit_dir / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(kit_dir / KEY_FILE, key)
        (kit_dir / CA_FILE).write_bytes(ca_pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        participants.append(
            ParticipantInfo(
                name=name,
                role=role,
                fingerprint=cert_fingerprint(der),
                admin=role is Role.SUBMITTER and name in spec.admins,
            )
        )

    kits = build / "kits"
    signing_keys = {name: _signing_key(kits / name) for name in spec.submitters}
    for silo in spec.silos:
        host, _ = spec.approval_address(silo.name)
        for unit, cert_file, key_file, server_host in (
            ("approval", APPROVAL_CERT_FILE, APPROVAL_KEY_FILE, host),
            ("admin", ADMIN_CERT_FILE, ADMIN_KEY_FILE, None),
        ):
            key, cert = _make_cert(
                spec, f"{silo.name}-{unit}", unit, ca_key, ca_cert, server_host=server_host
            )
            (kits / silo.name / cert_file).write_bytes(
                cert.public_bytes(serialization.Encoding.PEM)
            )
            write_private_key(kits / silo.name / key_file, key)
        _write_policy(silo, spec_path, kits / silo.name / POLICY_FILE, signing_keys)
    silo_infos = tuple(SiloInfo(name=s.name, compute=s.compute.name) for s in spec.silos)
    orchestrator_root = str(roots[ORCHESTRATOR_NAME])
    _write(
        spec,
        kits,
        Role.ORCHESTRATOR,
        ORCHESTRATOR_NAME,
        storage_root=orchestrator_root,
        silos=silo_infos,
        participants=tuple(participants),
    )
    for silo in spec.silos:
        root = str(roots[silo.name])
        own = silo.model_copy(update={"storage": silo.storage.model_copy(update={"root": root})})
        approval_host, approval_port = spec.approval_address(silo.name)
        _write(
            spec,
            kits,
            Role.SILO,
            silo.name,
            storage_root=root,
            silo=own,
            approval_host=approval_host,
            approval_port=approval_port,
        )
    for name in spec.submitters:
        _write(spec, kits, Role.SUBMITTER, name)
    for name in spec.admin_only:
        _write(spec, kits, Role.ADMIN, name)


def _write(spec: FederationSpec, kits: Path, role: Role, name: str, **fields: Any) -> None:
    kit = Kit.model_validate(
        {
            "federation": spec.name,
            "role": role,
            "name": name,
            "orchestrator_host": spec.orchestrator.host,
            "orchestrator_port": spec.orchestrator.port,
            **fields,
        }
    )
    write_kit(kit, kits / name)


def _create_storage(roots: dict[str, Path], out: Path, stage: Path) -> None:
    """Create missing storage roots: those inside a not yet existing ``out`` in the stage."""
    for root in roots.values():
        target = root
        if not out.exists() and root.is_relative_to(out):
            target = stage / "new" / root.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.mkdir(mode=0o700)


def _place(stage: Path, out: Path) -> None:
    """Move the staged CA, kits and spec into ``out``, restoring the old ones on failure."""
    new = stage / "new"
    if not out.exists():
        new.rename(out)
        return
    old = stage / "old"
    old.mkdir()
    placed: list[str] = []
    try:
        for name in _PLACED:
            if (out / name).exists():
                (out / name).rename(old / name)
            (new / name).rename(out / name)
            placed.append(name)
    except OSError:
        for name in _PLACED:
            if name in placed:
                _remove(out / name)
            if (old / name).exists():
                (old / name).rename(out / name)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _signing_key(kit_dir: Path) -> str:
    """Create a submitter's code-signing key in its kit; return the public key line."""
    return new_signing_key(kit_dir / SIGNING_KEY_FILE, comment=kit_dir.name)


def _write_policy(
    silo: SiloSpec, spec_path: Path, target: Path, signing_keys: dict[str, str]
) -> None:
    """The silo's own policy file, checked; else the default trusting the submitters' keys."""
    if silo.policy is None:
        target.write_text(default_policy_yaml(signing_keys))
    else:
        source = (spec_path.parent / os.path.expanduser(silo.policy)).resolve()
        if not source.is_file():
            raise ConfigError(
                f"the policy file of silo '{silo.name}' does not exist (looked in {source})",
                file=str(spec_path),
            )
        load_policy(source)
        shutil.copyfile(source, target)
    load_policy(target)


def _make_cert(
    spec: FederationSpec,
    name: str,
    unit: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    server_host: str | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and its certificate; with ``server_host``, also for serving TLS there."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(
        spec.name, name, unit, key.public_key(), ca_key, ca_cert, server_host=server_host
    )
    return key, cert
