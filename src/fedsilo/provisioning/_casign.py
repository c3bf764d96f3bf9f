"""The CA's side of enrollment: check a participant's request, sign it, record it.

Runs on the machine that holds the federation's CA (a provisioned workspace's
``ca/ca.key``). It reads a request file (certificate signing requests and public facts),
never a private key, and writes a reply file (certificates and public facts) and one line
per participant in ``ca/issued.yaml``, the record of every enrollment this CA signed: a
name or a compute it holds is taken, as are those of ``federation.yaml``.

A renewal request is the other way round: its name must be a participant of the
workspace already, in the same role, and it carries the certificate it renews (issued by
this CA) and a signature by that certificate's key over the new requests.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict

from fedsilo.config._federation import ORCHESTRATOR_NAME
from fedsilo.config._kit import (
    SIGNING_KEY_FILE,
    ParticipantInfo,
    Role,
    SiloInfo,
    cert_fingerprint,
    write_atomic,
)
from fedsilo.config._workspace import Workspace, open_workspace
from fedsilo.config._yamlio import load_yaml_mapping, validate_model
from fedsilo.errors import ConfigError, ProvisioningError, WorkspaceError
from fedsilo.provisioning._certs import issue_certificate, key_fingerprint, server_san, subject_name
from fedsilo.provisioning._enroll import (
    REPLY_FORMAT,
    EnrollmentReply,
    EnrollmentRequest,
    KitPart,
    kit_parts,
    load_request,
    renewal_payload,
    write_document,
)

__all__ = [
    "ISSUED_FILE",
    "Issued",
    "Renewing",
    "Review",
    "issued",
    "review_request",
    "sign_request",
]

ISSUED_FILE = "issued.yaml"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Issued(BaseModel):
    """One enrollment the CA signed: who, in which role, which certificate, until when."""

    model_config = _FROZEN

    name: str
    role: Role
    serial: str
    fingerprint: str
    not_after: dt.datetime
    signed_at: dt.datetime
    computes: tuple[str, ...] = ()
    signing_key: str | None = None
    renews: str | None = None  # the fingerprint of the certificate this one renews


class _Record(BaseModel):
    model_config = _FROZEN

    issued: tuple[Issued, ...] = ()


def issued(workspace: Workspace) -> tuple[Issued, ...]:
    """Every enrollment the workspace's CA has signed, oldest first."""
    path = workspace.root / "ca" / ISSUED_FILE
    if not path.is_file():
        return ()
    data, index = load_yaml_mapping(path)
    return validate_model(_Record, data, path, index).issued


@dataclass(frozen=True)
class Renewing:
    """What a renewal request renews: the participant as the workspace knows it, and the
    certificate it holds now."""

    known_as: str
    fingerprints: dict[str, str]
    not_after: dt.datetime


@dataclass(frozen=True)
class Review:
    """A request that passed every check, and what the CA's operator confirms before
    signing: who asks, for which role, with which keys and server names, and for a renewal
    which certificates it renews."""

    request_file: Path
    request: EnrollmentRequest
    key_fingerprints: dict[str, str]
    server_names: dict[str, tuple[str, ...]]
    renewing: Renewing | None = None


def review_request(request_file: Path, workspace: Path) -> Review:
    """Check ``request_file`` against the CA of ``workspace``; :class:`ConfigError` naming
    the participant and what to do for each refusal."""
    ws = open_workspace(workspace)
    request = load_request(request_file)
    _, ca_cert = _ca(ws)
    who = f"the request of '{request.name}'"
    spec = ws.federation
    if request.federation != spec.name:
        raise ConfigError(
            f"{who} is for federation '{request.federation}', but this workspace's CA is the "
            f"CA of federation '{spec.name}'; ask '{request.name}' to make its request again "
            f"with --federation {spec.name}",
            file=str(request_file),
            field="federation",
        )
    ca_fp = cert_fingerprint(ca_cert.public_bytes(serialization.Encoding.DER))
    if request.ca_fingerprint is not None and request.ca_fingerprint != ca_fp:
        raise ConfigError(
            f"{who} expects the CA whose certificate has sha256 {request.ca_fingerprint[:16]}..., "
            f"not this workspace's ({ca_fp[:16]}...); send '{request.name}' this workspace's "
            f"{ws.ca_file} and ask for a request made with --ca",
            file=str(request_file),
            field="ca_fingerprint",
        )
    fingerprints: dict[str, str] = {}
    names: dict[str, tuple[str, ...]] = {}
    for part in kit_parts(request.role):
        csr = _checked_csr(request, part, who, request_file)
        fingerprints[part.part] = key_fingerprint(csr.public_key())  # type: ignore[arg-type]
        if part.server:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names[part.part] = tuple(str(n.value) for n in san)
    if request.renews is None:
        _check_free(ws, request, who, request_file)
        return Review(request_file, request, fingerprints, names)
    renewing = _check_renewal(
        ws, request, ca_cert, f"the renewal of '{request.name}'", request_file
    )
    return Review(request_file, request, fingerprints, names, renewing)


def _ca(ws: Workspace) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_file = ws.root / "ca" / "ca.key"
    if not key_file.is_file():
        raise WorkspaceError(
            f"{ws.root} holds no CA key (ca/ca.key): sign on the machine that provisioned "
            f"federation '{ws.federation.name}'"
        )
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(ws.ca_file.read_bytes())
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise WorkspaceError(f"{key_file} is not the federation's CA key")
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
        raise WorkspaceError(
            f"the CA of federation '{ws.federation.name}' expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d}; it signs nothing more"
        )
    return key, cert


def _checked_csr(
    request: EnrollmentRequest, part: KitPart, who: str, request_file: Path
) -> x509.CertificateSigningRequest:
    """The part's CSR, once its signature holds and it asks for exactly what the role has."""
    field = f"csrs.{part.part}"
    try:
        csr = x509.load_pem_x509_csr(request.csrs[part.part].encode("ascii"))
        valid = csr.is_signature_valid
    except ValueError as exc:
        raise ConfigError(
            f"{who}: its {part.part} request is not a certificate signing request ({exc}); "
            f"ask '{request.name}' for a new request",
            file=str(request_file),
            field=field,
        ) from None
    if not valid:
        raise ConfigError(
            f"{who}: the signature of its {part.part} request does not verify (it was changed "
            f"after '{request.name}' signed it); ask '{request.name}' for a new request and "
            "check its key fingerprints with it",
            file=str(request_file),
            field=field,
        )
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            f"{who}: its {part.part} key is not an ECDSA P-256 key; ask for a new request",
            file=str(request_file),
            field=field,
        )

    def attribute(oid: x509.ObjectIdentifier) -> str:
        values = csr.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    unit = attribute(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if unit != part.unit:
        raise ConfigError(
            f"{who}: its {part.part} certificate request asks for role '{unit}', but the "
            f"request is for role '{request.role}' (whose {part.part} certificate has role "
            f"'{part.unit}'); refused: ask '{request.name}' for a new request "
            f"(--role {request.role})",
            file=str(request_file),
            field=field,
        )
    expected = subject_name(request.federation, part.common_name(request.name), part.unit)
    if csr.subject != expected:
        raise ConfigError(
            f"{who}: its {part.part} certificate request names "
            f"'{csr.subject.rfc4514_string()}', not '{expected.rfc4514_string()}'; ask "
            f"'{request.name}' for a new request",
            file=str(request_file),
            field=field,
        )
    host = request.approval_host if part.part == "approval" else request.host
    wanted = [server_san(host).oid] if part.server and host is not None else []
    asked = [ext.oid for ext in csr.extensions]
    san_ok = not part.server or (
        host is not None
        and asked == wanted
        and csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        == server_san(host)
    )
    if asked != wanted or not san_ok:
        raise ConfigError(
            f"{who}: its {part.part} certificate request asks for extensions the CA does not "
            f"grant it (server names must be those of host {host!r}); ask '{request.name}' "
            "for a new request",
            file=str(request_file),
            field=field,
        )
    return csr


def _check_free(ws: Workspace, request: EnrollmentRequest, who: str, request_file: Path) -> None:
    """Refuse a name or compute a participant of the workspace already has."""
    spec = ws.federation
    owners: dict[str, str] = {}
    for silo in spec.silos:
        for suffix in ("", "-approval", "-admin"):
            owners[silo.name + suffix] = f"silo '{silo.name}' of federation.yaml"
    for name in spec.submitters:
        owners[name] = "a submitter of federation.yaml"
    for name in spec.admins:
        owners.setdefault(name, "an administrator of federation.yaml")
    computes = {spec.orchestrator.compute.name: "the orchestrator"}
    for silo in spec.silos:
        computes |= {c.name: f"silo '{silo.name}'" for c in silo.all_computes()}
    for entry in issued(ws):
        day = f"{entry.signed_at:%Y-%m-%d}"
        suffixes = ("", "-approval", "-admin") if entry.role is Role.SILO else ("",)
        for suffix in suffixes:
            owners[entry.name + suffix] = f"a {entry.role} enrolled on {day} (ca/{ISSUED_FILE})"
        computes |= {c: f"silo '{entry.name}', enrolled on {day}" for c in entry.computes}
    if request.role is not Role.ORCHESTRATOR:
        owners[ORCHESTRATOR_NAME] = "the orchestrator"
    for part in kit_parts(request.role):
        name = part.common_name(request.name)
        if name in owners:
            raise ConfigError(
                f"{who}: the name '{name}' is taken in federation '{spec.name}': "
                f"{owners[name]} has it; ask the participant to enroll under another name",
                file=str(request_file),
                field="name",
            )
    for compute in (request.compute, *request.computes):
        if compute is not None and compute in computes:
            raise ConfigError(
                f"{who}: compute '{compute}' belongs to {computes[compute]}; ask '{request.name}' "
                "to name its compute otherwise",
                file=str(request_file),
                field="compute",
            )


def _members(ws: Workspace) -> dict[str, tuple[Role, str, tuple[str, ...]]]:
    """Each participant of the workspace: its role, where it is named, its computes."""
    spec = ws.federation
    known: dict[str, tuple[Role, str, tuple[str, ...]]] = {
        ORCHESTRATOR_NAME: (Role.ORCHESTRATOR, "federation.yaml", ())
    }
    for silo in spec.silos:
        computes = tuple(c.name for c in silo.all_computes())
        known[silo.name] = (Role.SILO, "federation.yaml", computes)
    for name in spec.admins:
        known[name] = (Role.ADMIN, "federation.yaml", ())
    for name in spec.submitters:
        known[name] = (Role.SUBMITTER, "federation.yaml", ())
    for entry in issued(ws):
        if entry.name not in known:
            where = f"ca/{ISSUED_FILE}, enrolled on {entry.signed_at:%Y-%m-%d}"
            known[entry.name] = (entry.role, where, entry.computes)
    return known


def _check_renewal(
    ws: Workspace,
    request: EnrollmentRequest,
    ca_cert: x509.Certificate,
    who: str,
    request_file: Path,
) -> Renewing:
    """Refuse a renewal for a participant the workspace does not have, in another role, of
    a certificate this CA did not issue, or not signed by that certificate's key."""
    assert request.renews is not None
    renews = request.renews
    federation = ws.federation.name
    found = _members(ws).get(request.name)
    if found is None:
        raise ConfigError(
            f"{who}: federation '{federation}' has no participant '{request.name}' (neither "
            f"federation.yaml nor ca/{ISSUED_FILE} names it); only a participant renews, a "
            "newcomer enrolls with an enrollment request",
            file=str(request_file),
            field="name",
        )
    role, where, computes = found
    if role is not request.role:
        raise ConfigError(
            f"{who}: '{request.name}' is a {role} of federation '{federation}' ({where}), but "
            f"the renewal asks for a {request.role} certificate; refused: a renewal keeps the "
            "role, ask for a new request from the kit of that participant",
            file=str(request_file),
            field="role",
        )
    asked = (request.compute, *request.computes) if request.compute else ()
    if role is Role.SILO and computes and asked != computes:
        raise ConfigError(
            f"{who}: silo '{request.name}' has compute(s) {', '.join(computes)} ({where}), "
            f"but the renewal names {', '.join(asked)}; a renewal keeps the computes",
            file=str(request_file),
            field="compute",
        )
    try:
        current = x509.load_pem_x509_certificate(renews.certificate.encode("ascii"))
    except ValueError as exc:
        raise ConfigError(
            f"{who}: the certificate it renews is not PEM ({exc}); ask for a new request",
            file=str(request_file),
            field="renews.certificate",
        ) from None
    main = kit_parts(request.role)[0]
    try:
        current.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        raise ConfigError(
            f"{who}: the certificate it renews was not issued by the CA of federation "
            f"'{federation}'; refused",
            file=str(request_file),
            field="renews.certificate",
        ) from None
    expected = subject_name(federation, main.common_name(request.name), main.unit)
    fingerprint = cert_fingerprint(current.public_bytes(serialization.Encoding.DER))
    if current.subject != expected or fingerprint != renews.fingerprints["main"]:
        raise ConfigError(
            f"{who}: the certificate it renews names {current.subject.rfc4514_string()} "
            f"(sha256 {fingerprint[:16]}...), not {expected.rfc4514_string()} with the "
            "fingerprint the request gives; refused: ask for a new request from its kit",
            file=str(request_file),
            field="renews",
        )
    payload = renewal_payload(request)
    key = current.public_key()
    try:
        signature = base64.b64decode(renews.signature, validate=True)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        raise ConfigError(
            f"{who}: the signature by its current key does not verify (the request was "
            f"changed after '{request.name}' made it, or not made with its kit); ask "
            f"'{request.name}' for a new request",
            file=str(request_file),
            field="renews.signature",
        ) from None
    return Renewing(where, dict(renews.fingerprints), current.not_valid_after_utc)


@dataclass(frozen=True)
class Signed:
    """What :func:`sign_request` wrote: the reply for the participant, and the record."""

    reply_file: Path
    reply: EnrollmentReply
    issued: Issued


def sign_request(request_file: Path, workspace: Path, *, to: Path | None = None) -> Signed:
    """Check ``request_file`` (as :func:`review_request`), issue its certificates with the
    CA of ``workspace``, record the enrollment and write the reply (default:
    ``NAME.reply.yaml`` beside the request)."""
    review = review_request(request_file, workspace)
    ws = open_workspace(workspace)
    ca_key, ca_cert = _ca(ws)
    request = review.request
    certs: dict[str, x509.Certificate] = {}
    for part in kit_parts(request.role):
        csr = x509.load_pem_x509_csr(request.csrs[part.part].encode("ascii"))
        host = request.approval_host if part.part == "approval" else request.host
        certs[part.part] = issue_certificate(
            request.federation,
            part.common_name(request.name),
            part.unit,
            csr.public_key(),  # type: ignore[arg-type]
            ca_key,
            ca_cert,
            server_host=host if part.server else None,
        )
    main = certs["main"]
    fingerprint = cert_fingerprint(main.public_bytes(serialization.Encoding.DER))
    entry = Issued(
        name=request.name,
        role=request.role,
        serial=format(main.serial_number, "x"),
        fingerprint=fingerprint,
        not_after=main.not_valid_after_utc,
        signed_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        computes=(request.compute, *request.computes) if request.compute else (),
        signing_key=request.signing_key,
        renews=review.renewing.fingerprints["main"] if review.renewing else None,
    )
    reply = EnrollmentReply(
        format=REPLY_FORMAT,
        federation=request.federation,
        name=request.name,
        role=request.role,
        orchestrator_host=ws.federation.orchestrator.host,
        orchestrator_port=ws.federation.orchestrator.port,
        ca=ws.ca_file.read_text(encoding="ascii"),
        certificates={
            part: cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
            for part, cert in certs.items()
        },
        compute=request.compute,
        approval_host=request.approval_host,
        approval_port=request.approval_port,
        trusted_keys=_submitter_keys(ws) if request.role is Role.SILO else {},
        silos=_silos(ws) if request.role is Role.ORCHESTRATOR else (),
        participants=_participants(ws, fingerprint) if request.role is Role.ORCHESTRATOR else (),
        renews=entry.renews,
    )
    target = (
        Path(to) if to is not None else Path(request_file).with_name(f"{request.name}.reply.yaml")
    )
    record = ws.root / "ca" / ISSUED_FILE
    entries = (*issued(ws), entry)
    try:
        kind, use = ("Renewal", "Install") if entry.renews else ("Enrollment", "Finish the kit")
        write_document(
            target,
            reply,
            f"{kind} reply for {request.role} '{request.name}' of federation "
            f"'{request.federation}'.\nIt holds no private key. {use} with it, on "
            "the machine that made the request.",
        )
        text = yaml.safe_dump(_Record(issued=entries).model_dump(mode="json"), sort_keys=False)
        write_atomic(record, text.encode("utf-8"))
    except OSError as exc:
        raise ProvisioningError(f"cannot write the reply {target}: {exc}") from exc
    return Signed(target, reply, entry)


def _submitter_keys(ws: Workspace) -> dict[str, str]:
    """The code-signing public keys of the submitters this workspace knows."""
    keys: dict[str, str] = {}
    for name in ws.federation.submitters:
        pub = ws.root / "kits" / name / f"{SIGNING_KEY_FILE}.pub"
        if pub.is_file():
            keys[name] = pub.read_text(encoding="utf-8").strip()
    for entry in issued(ws):
        if entry.signing_key is not None:
            keys[entry.name] = entry.signing_key
    return keys


def _silos(ws: Workspace) -> tuple[SiloInfo, ...]:
    known = [SiloInfo(name=s.name, compute=s.compute.name) for s in ws.federation.silos]
    known += [
        SiloInfo(name=e.name, compute=e.computes[0])
        for e in issued(ws)
        if e.role is Role.SILO and e.computes and e.renews is None
    ]
    return tuple(known)


def _participants(ws: Workspace, orchestrator_fingerprint: str) -> tuple[ParticipantInfo, ...]:
    """Who the newly enrolled orchestrator admits: the provisioned and enrolled participants,
    and itself with its new certificate."""
    provisioned = ws.kit(ORCHESTRATOR_NAME).participants
    people = [p for p in provisioned if p.role is not Role.ORCHESTRATOR]
    people.insert(
        0,
        ParticipantInfo(
            name=ORCHESTRATOR_NAME, role=Role.ORCHESTRATOR, fingerprint=orchestrator_fingerprint
        ),
    )
    people += [
        ParticipantInfo(name=e.name, role=e.role, fingerprint=e.fingerprint)
        for e in issued(ws)
        if e.role is not Role.ORCHESTRATOR
    ]
    return tuple(people)
