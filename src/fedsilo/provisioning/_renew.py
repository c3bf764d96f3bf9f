"""Certificate renewal, on the participant's machine: new keys, then a swap of the kit's files.

1. :func:`make_renewal` makes a new private key for every part of the kit in a staging
   folder beside it (``KIT/renewal``, mode 0700), never over the keys in use, and a
   renewal request: an enrollment request whose facts come from the kit itself, marked as
   renewing the kit's current certificates and signed by the current key (the CA checks
   that the sender holds the certificate it renews).
2. The CA signs it (:func:`fedsilo.provisioning._casign.sign_request`), the federation's
   administrator gives the member its new certificate at the orchestrator.
3. :func:`stage_reply` checks the reply as ``enroll finish`` does (each certificate for its
   staged key, from the kit's own CA, valid now, naming this participant) and puts the
   certificates beside the staged keys: a kit located there connects with the new identity.
4. :func:`install_renewal` swaps the kit's key and certificate files. No two files can be
   replaced at once, so the swap is journalled: the old files are kept as ``*.previous``,
   the staging folder keeps the whole new set, and a marker (``renewal/installing``) says
   the kit is between the two. :func:`fedsilo.config.load_kit` refuses a kit with the
   marker, and running the install again finishes it. ``kit.yaml``, ``policy.yaml`` and
   ``ca.crt`` are kept.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.config._kit import (
    CA_FILE,
    INSTALLING_FILE,
    RENEWAL_DIR,
    Kit,
    Role,
    cert_fingerprint,
    load_kit,
    write_atomic,
)
from fedsilo.config._yamlio import validate_model
from fedsilo.errors import ConfigError, ProvisioningError
from fedsilo.jobs import load_private_key, public_key_line
from fedsilo.provisioning._enroll import (
    REQUEST_FORMAT,
    EnrollmentRequest,
    Renewal,
    RequestMade,
    checked_cert,
    kit_parts,
    load_reply,
    new_keys,
    renewal_payload,
    reply_ca,
    write_document,
)

__all__ = [
    "PREVIOUS_SUFFIX",
    "Staged",
    "install_renewal",
    "make_renewal",
    "renewal_file_name",
    "stage_reply",
]

PREVIOUS_SUFFIX = ".previous"
"""Appended to a kit file's name while the install keeps the old one."""


def renewal_file_name(name: str) -> str:
    """The renewal request :func:`make_renewal` writes for participant ``name``."""
    return f"{name}.renewal.yaml"


def _fingerprint(path: Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the certificate: {exc}", file=str(path)) from None
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _renewable(kit_dir: Path) -> Kit:
    kit = load_kit(kit_dir)
    if kit.role is Role.ORCHESTRATOR:
        raise ConfigError(
            "the orchestrator's certificate is not renewed this way: the members' kits name "
            "no fingerprint of it, only the CA, so a new one comes from provisioning the "
            "orchestrator's kit again on the CA's machine (docs/provisioning.md)",
            file=str(kit.kit_dir),
        )
    return kit


def make_renewal(kit_dir: Path) -> RequestMade:
    """New private keys for every part of the kit in ``kit_dir`` and the renewal request to
    send to the CA's operator, both in ``kit_dir/renewal``; the kit itself is unchanged."""
    kit = _renewable(Path(kit_dir).expanduser().absolute())
    folder = kit.kit_dir
    staging = folder / RENEWAL_DIR
    if staging.exists():
        raise ConfigError(
            f"a renewal of '{kit.name}' is under way: its keys and request are in {staging}; "
            "install the reply to it (fedsilo certs install), or remove that folder to start "
            "again",
            file=str(staging),
        )
    stage = Path(tempfile.mkdtemp(prefix=".fedsilo-renew-", dir=folder))
    try:
        approval = kit.approval_host if kit.role is Role.SILO else None
        csrs, fingerprints = new_keys(
            stage, kit.federation, kit.name, kit.role, approval=approval, host=None
        )
        unsigned = validate_model(
            EnrollmentRequest,
            {
                "format": REQUEST_FORMAT,
                "federation": kit.federation,
                "name": kit.name,
                "role": kit.role,
                "csrs": csrs,
                **_kit_facts(kit),
                "ca_fingerprint": _fingerprint(kit.ca_file),
                "renews": Renewal(
                    certificate=kit.cert_file.read_text(encoding="ascii"),
                    fingerprints={
                        p.part: _fingerprint(folder / p.cert_file) for p in kit_parts(kit.role)
                    },
                ),
            },
            staging / renewal_file_name(kit.name),
        )
        request = _signed(kit, unsigned)
        write_document(
            stage / renewal_file_name(kit.name),
            request,
            f"Renewal request of {kit.role} '{kit.name}' of federation '{kit.federation}'.\n"
            "It holds no private key: send it to the federation's administrator.",
        )
        os.rename(stage, staging)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    keys = tuple(staging / part.key_file for part in kit_parts(kit.role))
    return RequestMade(staging / renewal_file_name(kit.name), request, keys, fingerprints)


def _kit_facts(kit: Kit) -> dict[str, Any]:
    """The public facts a request states, as the kit holds them."""
    facts: dict[str, Any] = {}
    if kit.silo is not None:
        computes = [c.name for c in kit.silo.all_computes()]
        facts |= {
            "compute": computes[0],
            "computes": computes[1:],
            "approval_host": kit.approval_host,
            "approval_port": kit.approval_port,
        }
    if kit.role is Role.SUBMITTER:
        signing = load_private_key(kit.signing_key_file)
        facts["signing_key"] = public_key_line(signing.public_key(), kit.name)
    return facts


def _signed(kit: Kit, request: EnrollmentRequest) -> EnrollmentRequest:
    """``request`` signed by the kit's current key: the CA knows who renews."""
    try:
        key = serialization.load_pem_private_key(kit.key_file.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the kit's key: {exc}", file=str(kit.key_file)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or request.renews is None:
        raise ConfigError("the kit's key is not an ECDSA key", file=str(kit.key_file))
    signature = key.sign(renewal_payload(request), ec.ECDSA(hashes.SHA256()))
    renews = request.renews.model_copy(
        update={"signature": base64.b64encode(signature).decode("ascii")}
    )
    return request.model_copy(update={"renews": renews})


@dataclass(frozen=True)
class Staged:
    """A reply that passed every check, its certificates put beside the staged keys."""

    kit: Kit  # the kit as it is now
    staged: Kit  # the same kit located in the staging folder: the new identity
    fingerprint: str  # the new main certificate's
    renews: str  # the main certificate it replaces


def stage_reply(reply_file: Path, kit_dir: Path) -> Staged:
    """Check ``reply_file`` against the staged keys of the kit in ``kit_dir`` and its CA,
    and put its certificates beside those keys."""
    kit_dir = Path(kit_dir).expanduser().absolute()
    staging = kit_dir / RENEWAL_DIR
    installing = (staging / INSTALLING_FILE).is_file()
    kit = load_kit(kit_dir, installing=True) if installing else _renewable(kit_dir)
    reply = load_reply(Path(reply_file))
    if (reply.federation, reply.name, reply.role) != (kit.federation, kit.name, kit.role):
        raise ConfigError(
            f"the reply is for {reply.role} '{reply.name}' of federation '{reply.federation}', "
            f"but this kit is {kit.role} '{kit.name}' of federation '{kit.federation}'; install "
            "the reply to this kit's renewal request",
            file=str(reply_file),
        )
    if reply.renews is None:
        raise ConfigError(
            f"the reply enrolls '{reply.name}' anew, it renews no certificate; install the "
            "reply the CA signed for this kit's renewal request",
            file=str(reply_file),
            field="renews",
        )
    if not (staging / renewal_file_name(kit.name)).is_file():
        raise ConfigError(
            f"no renewal of '{kit.name}' is under way in this kit (no {RENEWAL_DIR}/"
            f"{renewal_file_name(kit.name)}): the reply answers a request made elsewhere",
            file=str(kit_dir),
        )
    ca = reply_ca(reply, Path(reply_file), kit_dir)
    certs = {
        part.part: checked_cert(reply, part, ca, staging, Path(reply_file))
        for part in kit_parts(kit.role)
    }
    new = cert_fingerprint(
        x509.load_pem_x509_certificate(certs["main"]).public_bytes(serialization.Encoding.DER)
    )
    main_cert = kit_dir / kit_parts(kit.role)[0].cert_file
    current = _fingerprint(
        main_cert.with_name(main_cert.name + PREVIOUS_SUFFIX) if installing else main_cert
    )
    if reply.renews != current:
        raise ConfigError(
            f"the reply renews certificate sha256 {reply.renews[:16]}..., but this kit holds "
            f"{current[:16]}...; install the reply to this kit's renewal request",
            file=str(reply_file),
            field="renews",
        )
    try:
        for part in kit_parts(kit.role):
            write_atomic(staging / part.cert_file, certs[part.part])
        write_atomic(staging / CA_FILE, kit.ca_file.read_bytes())
    except OSError as exc:
        raise ProvisioningError(f"cannot write in {staging}: {exc}") from exc
    return Staged(kit, kit.located(staging), new, current)


def install_renewal(staged: Staged) -> Kit:
    """Swap the kit's key and certificate files for the staged ones; returns the kit.

    Every file is replaced with :func:`os.replace`; the old ones stay as ``*.previous``
    until the last new one is in place, and the staging folder (with its marker) until then
    too, so an install stopped half-way is finished by running it again.
    """
    kit_dir = staged.kit.kit_dir
    staging = staged.staged.kit_dir
    marker = staging / INSTALLING_FILE
    names = [f for part in kit_parts(staged.kit.role) for f in (part.key_file, part.cert_file)]
    try:
        if not marker.is_file():
            for name in names:
                previous = kit_dir / (name + PREVIOUS_SUFFIX)
                previous.unlink(missing_ok=True)
                os.link(kit_dir / name, previous)
            write_atomic(marker, f"renews {staged.renews}\n".encode("ascii"), mode=0o600)
        for name in names:
            mode = (staging / name).stat().st_mode & 0o777
            write_atomic(kit_dir / name, (staging / name).read_bytes(), mode=mode)
        marker.unlink()
        for name in names:
            (kit_dir / (name + PREVIOUS_SUFFIX)).unlink(missing_ok=True)
        shutil.rmtree(staging)
    except OSError as exc:
        raise ProvisioningError(
            f"the certificates of '{staged.kit.name}' are installed only in part ({exc}); "
            "the old files are kept as *.previous: run the install again to finish it",
        ) from exc
    return load_kit(kit_dir)
