"""Enrollment: a participant joins with keys it made on its own machine.

Three steps, on two machines, and no private key crosses between them:

1. :func:`make_request`, on the participant's machine, creates its private keys (mode
   0600, they stay in the folder) and one request file that is safe to send: a
   certificate signing request per key, each signed by that key (proof of possession),
   and public facts (a silo's computes and approval address, the orchestrator's host, a
   submitter's code-signing public key).
2. :func:`fedsilo.provisioning._casign.sign_request`, on the machine that holds the federation's
   CA, checks the request and answers with a reply file: the certificates, the CA
   certificate and what the participant's kit needs to know of the federation.
3. :func:`finish_enrollment`, back on the participant's machine, checks that every
   certificate is for its own key and chains to the reply's CA, and writes the kit.

A silo's storage root is chosen there too (``--storage``), and :func:`set_storage` moves
it for any kit, provisioned or enrolled: a silo's paths are its own.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsilo.approval import default_policy_yaml, load_policy
from fedsilo.config._federation import (
    DATASET_PATTERN,
    ORCHESTRATOR_NAME,
    PARTICIPANT_PATTERN,
    ParticipantName,
    SiloSpec,
    StorageSpec,
)
from fedsilo.config._kit import (
    ADMIN_CERT_FILE,
    ADMIN_KEY_FILE,
    APPROVAL_CERT_FILE,
    APPROVAL_KEY_FILE,
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    KIT_FILE,
    POLICY_FILE,
    SIGNING_KEY_FILE,
    Kit,
    ParticipantInfo,
    Role,
    SiloInfo,
    cert_fingerprint,
    load_kit,
    write_atomic,
    write_kit,
)
from fedsilo.config._yamlio import FieldIssue, load_yaml_mapping, validate_model
from fedsilo.errors import ConfigError, ProvisioningError
from fedsilo.jobs import new_signing_key
from fedsilo.provisioning._certs import key_fingerprint, server_san, subject_name, write_private_key

__all__ = [
    "DEFAULT_APPROVAL_PORT",
    "EnrollmentReply",
    "EnrollmentRequest",
    "KitPart",
    "Renewal",
    "RequestMade",
    "finish_enrollment",
    "kit_parts",
    "load_reply",
    "load_request",
    "make_request",
    "new_keys",
    "renewal_payload",
    "reply_member",
    "request_file_name",
    "set_storage",
    "write_document",
]

REQUEST_FORMAT: Final = "fedsilo-enrollment-request/1"
REPLY_FORMAT: Final = "fedsilo-enrollment-reply/1"
LOCAL_SILO_FILE = "pending-silo.yaml"
"""The silo's own spec, kept beside its keys between request and finish; never sent."""
DEFAULT_APPROVAL_PORT = 8444

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_HEX64 = r"^[0-9a-f]{64}$"
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class KitPart:
    """One key of a kit and the certificate the CA issues for it."""

    part: str  # the key of the request's ``csrs`` and of the reply's ``certificates``
    suffix: str  # appended to the participant's name to make the certificate's CN
    unit: str  # the certificate's OU
    key_file: str
    cert_file: str
    server: bool  # whether it serves TLS (its certificate names hosts)

    def common_name(self, name: str) -> str:
        """The certificate's CN for participant ``name``."""
        return name + self.suffix


def kit_parts(role: Role) -> tuple[KitPart, ...]:
    """The keys a participant of ``role`` holds: its own, and for a silo its approval
    endpoint's and its administrator's (the same as ``fedsilo provision`` makes)."""
    main = KitPart("main", "", role.value, KEY_FILE, CERT_FILE, role is Role.ORCHESTRATOR)
    if role is not Role.SILO:
        return (main,)
    return (
        main,
        KitPart("approval", "-approval", "approval", APPROVAL_KEY_FILE, APPROVAL_CERT_FILE, True),
        KitPart("admin", "-admin", "admin", ADMIN_KEY_FILE, ADMIN_CERT_FILE, False),
    )


class Renewal(BaseModel):
    """What a renewal request renews, and the proof that its sender holds it: the
    participant's current certificate (PEM), the fingerprint of each part's current
    certificate, and a signature (base64, ECDSA-SHA256) by its current key over the whole
    request (:func:`renewal_payload`)."""

    model_config = _FROZEN

    certificate: str
    fingerprints: dict[str, Annotated[str, Field(pattern=_HEX64)]]
    signature: str = ""


class EnrollmentRequest(BaseModel):
    """``NAME.request.yaml``: what a participant sends to the CA's operator.

    Certificate signing requests (PEM) by part, and public facts only.
    """

    model_config = _FROZEN

    format: Literal["fedsilo-enrollment-request/1"]
    federation: Annotated[str, Field(pattern=DATASET_PATTERN)]
    name: ParticipantName
    role: Role
    csrs: dict[str, str]
    compute: str | None = None
    computes: tuple[str, ...] = ()
    approval_host: str | None = None
    approval_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    host: str | None = None
    signing_key: str | None = None
    ca_fingerprint: Annotated[str | None, Field(pattern=_HEX64)] = None
    renews: Renewal | None = None

    @model_validator(mode="after")
    def _fits_role(self) -> EnrollmentRequest:
        _check_role_facts(self.role, self.name, self, "csrs", self.csrs)
        if self.renews is not None and sorted(self.renews.fingerprints) != sorted(self.csrs):
            raise FieldIssue(
                ("renews", "fingerprints"),
                f"a renewal names the current certificate of each part: {', '.join(self.csrs)}",
            )
        if self.role is Role.SUBMITTER and not self.signing_key:
            raise FieldIssue(("signing_key",), "a submitter's request carries its signing key")
        if self.role is not Role.SUBMITTER and self.signing_key is not None:
            raise FieldIssue(("signing_key",), f"a {self.role} has no code-signing key")
        return self


class EnrollmentReply(BaseModel):
    """``NAME.reply.yaml``: the CA's answer to one request.

    The certificates (PEM) by part, the CA certificate, the federation's name and its
    orchestrator's address; for a silo the code-signing keys of the submitters the CA knows
    (its default policy trusts them); for the orchestrator the silos and participants.
    """

    model_config = _FROZEN

    format: Literal["fedsilo-enrollment-reply/1"]
    federation: Annotated[str, Field(pattern=DATASET_PATTERN)]
    name: ParticipantName
    role: Role
    orchestrator_host: str
    orchestrator_port: Annotated[int, Field(ge=1, le=65535)]
    ca: str
    certificates: dict[str, str]
    compute: str | None = None
    approval_host: str | None = None
    approval_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    trusted_keys: dict[str, str] = Field(default_factory=dict)
    silos: tuple[SiloInfo, ...] = ()
    participants: tuple[ParticipantInfo, ...] = ()
    renews: Annotated[str | None, Field(pattern=_HEX64)] = None

    @model_validator(mode="after")
    def _fits_role(self) -> EnrollmentReply:
        _check_role_facts(self.role, self.name, self, "certificates", self.certificates)
        return self


def _check_role_facts(
    role: Role,
    name: str,
    facts: EnrollmentRequest | EnrollmentReply,
    field: str,
    parts: dict[str, str],
) -> None:
    """The facts a role's request and reply carry, and only those; ``parts`` (in ``field``)
    has one entry per key of the role's kit."""
    wanted = [p.part for p in kit_parts(role)]
    if sorted(parts) != sorted(wanted):
        raise FieldIssue(
            (field,),
            f"for a {role}, {field} holds {', '.join(wanted)}, not {', '.join(parts) or 'none'}",
        )
    if (role is Role.ORCHESTRATOR) != (name == ORCHESTRATOR_NAME):
        raise FieldIssue(
            ("name",),
            f"the name '{ORCHESTRATOR_NAME}' is the orchestrator's, and the orchestrator's "
            f"name is '{ORCHESTRATOR_NAME}' (got '{name}' as {role})",
        )
    silo = role is Role.SILO
    for fact in ("compute", "approval_host", "approval_port"):
        if (getattr(facts, fact) is not None) != silo:
            raise FieldIssue(
                (fact,),
                f"a {'silo needs' if silo else f'{role} has no'} {fact.replace('_', ' ')}",
            )
    if isinstance(facts, EnrollmentRequest) and (facts.host is not None) != (
        role is Role.ORCHESTRATOR
    ):
        raise FieldIssue(("host",), "only the orchestrator's request names its host")


def renewal_payload(request: EnrollmentRequest) -> bytes:
    """The bytes a renewal's current key signs: every field of the request, its signature
    left out (canonical JSON)."""
    data = request.model_dump(mode="json")
    data["renews"] = {**data["renews"], "signature": ""} if data["renews"] else None
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def request_file_name(name: str) -> str:
    """The request file ``make_request`` writes for participant ``name``."""
    return f"{name}.request.yaml"


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (PEM) as literal blocks, readable as they are."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def write_document(path: Path, model: BaseModel, header: str) -> None:
    """Write ``model`` as YAML under a comment ``header``, atomically."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    body = yaml.dump(model.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False)
    write_atomic(path, (comment + body).encode("utf-8"))


def _load(model_cls: type[ModelT], path: Path, what: str) -> ModelT:
    data, index = load_yaml_mapping(path)
    expected = REQUEST_FORMAT if model_cls is EnrollmentRequest else REPLY_FORMAT
    if data.get("format") != expected:
        raise ConfigError(
            f"not {what} (its format is {data.get('format')!r}, expected {expected!r})",
            file=str(path),
            field="format",
            line=index.line_of(("format",)),
        )
    return validate_model(model_cls, data, path, index)


def load_request(path: Path) -> EnrollmentRequest:
    """Read an enrollment request; :class:`ConfigError` naming the file and field if bad."""
    return _load(EnrollmentRequest, Path(path), "an enrollment request")


def load_reply(path: Path) -> EnrollmentReply:
    """Read an enrollment reply; :class:`ConfigError` naming the file and field if bad."""
    return _load(EnrollmentReply, Path(path), "an enrollment reply")


def reply_member(path: Path) -> tuple[str, str | None]:
    """The participant's own certificate (PEM) and, for a silo, its compute, from a reply:
    what the orchestrator needs to admit it while the federation runs."""
    reply = load_reply(path)
    return reply.certificates["main"], reply.compute


# -- on the participant's machine: the request ------------------------------------------------


@dataclass(frozen=True)
class RequestMade:
    """What :func:`make_request` wrote: the request to send and the keys that stay."""

    request_file: Path
    request: EnrollmentRequest
    key_files: tuple[Path, ...]
    key_fingerprints: dict[str, str]


@dataclass(frozen=True)
class _SiloFacts:
    spec: dict[str, Any]  # the silo's spec as kept in pending-silo.yaml (storage only if given)
    computes: tuple[str, ...]
    approval_host: str
    approval_port: int


def make_request(
    out: Path,
    *,
    federation: str,
    name: str,
    role: Role,
    silo_spec: Path | None = None,
    compute: str | None = None,
    approval_host: str | None = None,
    approval_port: int | None = None,
    host: str | None = None,
    ca_file: Path | None = None,
) -> RequestMade:
    """Create ``role``'s private keys in folder ``out`` and the request file to send.

    A silo names its compute (``compute``) or gives its spec (``silo_spec``: one entry of
    ``silos:`` in the federation spec's format, storage optional); the orchestrator gives
    the ``host`` its certificate serves. ``ca_file``, the federation's CA certificate got
    beforehand, pins the CA: the request names it, and the reply must come from it.
    """
    out = Path(out).expanduser().absolute()
    if not re.fullmatch(PARTICIPANT_PATTERN, name):
        raise ConfigError(
            f"'{name}' is not a participant name: 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    if not re.fullmatch(DATASET_PATTERN, federation):
        raise ConfigError(
            f"'{federation}' is not a federation name: 1-128 letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    silo = _silo_facts(name, silo_spec, compute, approval_host, approval_port, role)
    if role is not Role.SILO and (compute or approval_host or approval_port):
        raise ConfigError(f"'{name}' enrolls as {role}: only a silo has a compute and approval")
    if (role is Role.ORCHESTRATOR) != (host is not None):
        raise ConfigError(
            "the orchestrator's request names the host silos reach it at (--host)"
            if role is Role.ORCHESTRATOR
            else f"'{name}' enrolls as {role}: only the orchestrator names a host"
        )
    ca_pem, ca_fp = _pinned_ca(ca_file)
    parts = kit_parts(role)
    taken = [f for p in parts for f in (p.key_file, p.cert_file)] + [KIT_FILE, SIGNING_KEY_FILE]
    existing = [f for f in taken if (out / f).exists()]
    if existing:
        raise ConfigError(
            f"the folder already holds {', '.join(existing)}; enroll into a folder of its own",
            file=str(out),
        )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".fedsilo-enroll-", dir=out))
    try:
        approval = silo.approval_host if silo else None
        csrs, fingerprints = new_keys(stage, federation, name, role, approval=approval, host=host)
        signing = None
        if role is Role.SUBMITTER:
            signing = new_signing_key(stage / SIGNING_KEY_FILE, comment=name)
        request = validate_model(
            EnrollmentRequest,
            {
                "format": REQUEST_FORMAT,
                "federation": federation,
                "name": name,
                "role": role,
                "csrs": csrs,
                "compute": silo.computes[0] if silo else None,
                "computes": silo.computes[1:] if silo else (),
                "approval_host": silo.approval_host if silo else None,
                "approval_port": silo.approval_port if silo else None,
                "host": host,
                "signing_key": signing,
                "ca_fingerprint": ca_fp,
            },
            out / request_file_name(name),
        )
        if silo is not None:
            text = yaml.safe_dump(silo.spec, sort_keys=False)
            (stage / LOCAL_SILO_FILE).write_text(text, encoding="utf-8")
        if ca_pem is not None:
            (stage / CA_FILE).write_bytes(ca_pem)
        write_document(
            stage / request_file_name(name),
            request,
            f"Enrollment request of {role} '{name}' for federation '{federation}'.\n"
            "It holds no private key: send it to the federation's administrator.",
        )
        for item in sorted(stage.iterdir()):
            item.rename(out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    keys = [out / p.key_file for p in parts]
    if role is Role.SUBMITTER:
        keys.append(out / SIGNING_KEY_FILE)
    return RequestMade(out / request_file_name(name), request, tuple(keys), fingerprints)


def new_keys(
    folder: Path,
    federation: str,
    name: str,
    role: Role,
    *,
    approval: str | None,
    host: str | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """A new private key per part of ``role``'s kit, written in ``folder`` (mode 0600), and
    for each part its certificate signing request (PEM) and its key's fingerprint.

    ``approval`` is the host a silo's approval endpoint serves, ``host`` the orchestrator's.
    """
    csrs: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    for part in kit_parts(role):
        key = ec.generate_private_key(ec.SECP256R1())
        write_private_key(folder / part.key_file, key)
        server = approval if part.part == "approval" else host
        csrs[part.part] = _csr(federation, name, part, key, server if part.server else None)
        fingerprints[part.part] = key_fingerprint(key.public_key())
    return csrs, fingerprints


def _csr(
    federation: str, name: str, part: KitPart, key: ec.EllipticCurvePrivateKey, host: str | None
) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject_name(federation, part.common_name(name), part.unit)
    )
    if host is not None:
        builder = builder.add_extension(server_san(host), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _pinned_ca(ca_file: Path | None) -> tuple[bytes | None, str | None]:
    if ca_file is None:
        return None, None
    try:
        pem = Path(ca_file).read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"not a CA certificate (PEM): {exc}", file=str(ca_file)) from None
    return pem, cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _silo_facts(
    name: str,
    spec_file: Path | None,
    compute: str | None,
    approval_host: str | None,
    approval_port: int | None,
    role: Role,
) -> _SiloFacts | None:
    """The silo's spec (from ``spec_file`` or its compute's name) and approval address."""
    if role is not Role.SILO:
        if spec_file is not None:
            raise ConfigError(f"'{name}' enrolls as {role}: only a silo has a silo spec")
        return None
    if spec_file is None:
        if compute is None:
            raise ConfigError(
                f"silo '{name}' names its compute: give --compute NAME, or --silo-spec FILE"
            )
        data: dict[str, Any] = {"name": name, "compute": {"name": compute}}
        where = Path(f"--compute {compute}")
        index = None
    else:
        spec_file = Path(spec_file).expanduser().absolute()
        data, index = load_yaml_mapping(spec_file)
        where = spec_file
        if data.setdefault("name", name) != name:
            raise ConfigError(
                f"the silo spec is for silo '{data['name']}', not for '{name}'",
                file=str(spec_file),
                field="name",
                line=index.line_of(("name",)),
            )
    placeholder = {"root": "/storage-chosen-at-enroll-finish"}
    spec = validate_model(SiloSpec, {"storage": placeholder, **data}, where, index)
    if compute is not None and compute != spec.compute.name:
        raise ConfigError(
            f"--compute {compute} differs from the silo spec's compute '{spec.compute.name}'",
            file=str(where),
        )
    own = spec.model_dump(mode="json", exclude_defaults=True)
    own.pop("storage", None)
    base = where.parent if spec_file is not None else Path.cwd()
    if "storage" in data:
        own["storage"] = {"root": str((base / os.path.expanduser(spec.storage.root)).absolute())}
    if spec.policy is not None:
        policy = (base / os.path.expanduser(spec.policy)).resolve()
        if not policy.is_file():
            raise ConfigError(
                f"the policy file of silo '{name}' does not exist (looked in {policy})",
                file=str(where),
                field="policy",
            )
        own["policy"] = str(policy)
    host = approval_host or spec.approval.host
    port = approval_port or spec.approval.port or DEFAULT_APPROVAL_PORT
    own["approval"] = {"host": host, "port": port}
    computes = tuple(c.name for c in spec.all_computes())
    return _SiloFacts(spec=own, computes=computes, approval_host=host, approval_port=port)


# -- on the participant's machine: the kit ---------------------------------------------------


def finish_enrollment(
    reply_file: Path,
    kit_dir: Path,
    *,
    storage: Path | None = None,
    policy: Path | None = None,
) -> Kit:
    """Assemble the kit in ``kit_dir`` (where :func:`make_request` left the keys) from the
    CA's reply, after checking every certificate against the local keys and the CA.

    ``storage`` is the storage root of a silo or the orchestrator (made absolute, created
    mode 0700); a silo may have given it in its spec instead. ``policy`` replaces a silo's
    policy; without it a new silo gets the default policy trusting the reply's submitters'
    keys, and a silo finishing again keeps the ``policy.yaml`` it has.
    """
    reply_file = Path(reply_file)
    kit_dir = Path(kit_dir).expanduser().absolute()
    reply = load_reply(reply_file)
    who = f"{reply.role} '{reply.name}'"
    local_request = kit_dir / request_file_name(reply.name)
    if local_request.is_file():
        asked = load_request(local_request)
        if (asked.federation, asked.role) != (reply.federation, reply.role):
            raise ConfigError(
                f"the reply is for {who} of federation '{reply.federation}', but this folder "
                f"asked as {asked.role} of federation '{asked.federation}'; "
                "ask the administrator for the reply to this folder's request",
                file=str(reply_file),
            )
    ca = reply_ca(reply, reply_file, kit_dir)
    certs = {
        part.part: checked_cert(reply, part, ca, kit_dir, reply_file)
        for part in kit_parts(reply.role)
    }
    fields: dict[str, Any] = {}
    silo_spec: SiloSpec | None = None
    if reply.role in (Role.SILO, Role.ORCHESTRATOR):
        root = _storage_root(reply, kit_dir, storage)
        fields["storage_root"] = str(root)
    if reply.role is Role.SILO:
        silo_spec = _kit_silo_spec(reply, kit_dir, fields["storage_root"])
        fields |= {
            "silo": silo_spec,
            "approval_host": reply.approval_host,
            "approval_port": reply.approval_port,
        }
    if reply.role is Role.ORCHESTRATOR:
        fields |= {"silos": reply.silos, "participants": reply.participants}
    kit = Kit.model_validate(
        {
            "federation": reply.federation,
            "role": reply.role,
            "name": reply.name,
            "orchestrator_host": reply.orchestrator_host,
            "orchestrator_port": reply.orchestrator_port,
            **fields,
        }
    )
    policy_text = _policy_text(reply, silo_spec, kit_dir, policy)
    try:
        if reply.role in (Role.SILO, Role.ORCHESTRATOR):
            Path(kit.storage_path).mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(kit_dir / CA_FILE, reply.ca.encode("ascii"))
        for part in kit_parts(reply.role):
            write_atomic(kit_dir / part.cert_file, certs[part.part])
        if policy_text is not None:
            write_atomic(kit_dir / POLICY_FILE, policy_text.encode("utf-8"))
        write_kit(kit, kit_dir)
    except OSError as exc:
        raise ProvisioningError(f"cannot write the kit in {kit_dir}: {exc}") from exc
    (kit_dir / LOCAL_SILO_FILE).unlink(missing_ok=True)
    return load_kit(kit_dir)


def reply_ca(reply: EnrollmentReply, reply_file: Path, kit_dir: Path) -> x509.Certificate:
    """The reply's CA certificate; refused unless it is the CA this folder already trusts."""
    try:
        ca = x509.load_pem_x509_certificate(reply.ca.encode("ascii"))
    except ValueError as exc:
        raise ConfigError(
            f"the CA certificate is not PEM: {exc}", file=str(reply_file), field="ca"
        ) from None
    got = cert_fingerprint(ca.public_bytes(serialization.Encoding.DER))
    held = kit_dir / CA_FILE
    if held.is_file():
        try:
            mine = x509.load_pem_x509_certificate(held.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"not a CA certificate: {exc}", file=str(held)) from None
        want = cert_fingerprint(mine.public_bytes(serialization.Encoding.DER))
        if want != got:
            raise ConfigError(
                f"the reply for {reply.role} '{reply.name}' was signed by a CA of federation "
                f"'{reply.federation}' (certificate sha256 {got[:16]}...), but the kit in "
                f"{kit_dir} trusts another CA ({CA_FILE}, sha256 {want[:16]}...); have the "
                "request signed by the CA this kit holds, or enroll into a new folder",
                file=str(reply_file),
                field="ca",
            )
    return ca


def checked_cert(
    reply: EnrollmentReply, part: KitPart, ca: x509.Certificate, kit_dir: Path, reply_file: Path
) -> bytes:
    """The part's certificate, once it is for the local key, from the CA, valid now."""
    where = f"certificate '{part.part}' of {reply.role} '{reply.name}'"
    pem = reply.certificates[part.part].encode("ascii")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError(f"{where} is not PEM: {exc}", file=str(reply_file)) from None
    key_path = kit_dir / part.key_file
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(
            f"this folder holds no {part.key_file} for {where}: finish the enrollment in the "
            "folder its request was made in",
            file=str(kit_dir),
        ) from None
    except ValueError as exc:
        raise ConfigError(f"not a private key: {exc}", file=str(key_path)) from None
    if key_fingerprint(cert.public_key()) != key_fingerprint(key.public_key()):  # type: ignore[arg-type]
        raise ConfigError(
            f"{where} is not for this folder's key {part.key_file}: the reply answers another "
            "request; ask the administrator for the reply to this folder's request",
            file=str(reply_file),
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise ConfigError(
            f"{where} is not signed by the reply's CA; ask the administrator for a new reply",
            file=str(reply_file),
        ) from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(
            f"{where} is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now: it has expired; make a new "
            "request and have it signed",
            file=str(reply_file),
        )
    expected = subject_name(reply.federation, part.common_name(reply.name), part.unit)
    if cert.subject != expected:
        raise ConfigError(
            f"{where} names {cert.subject.rfc4514_string()}, not "
            f"{expected.rfc4514_string()}; ask the administrator for a new reply",
            file=str(reply_file),
        )
    return pem


def _storage_root(reply: EnrollmentReply, kit_dir: Path, storage: Path | None) -> Path:
    if storage is None and reply.role is Role.SILO:
        local = _local_silo(reply, kit_dir)
        given = local.get("storage")
        if isinstance(given, dict) and isinstance(given.get("root"), str):
            storage = Path(given["root"])
    if storage is None:
        raise ConfigError(
            f"{reply.role} '{reply.name}' keeps its data on this machine: choose the folder "
            "with --storage PATH"
        )
    return _absolute_root(storage)


def _absolute_root(storage: Path) -> Path:
    root = Path(os.path.expanduser(storage)).absolute()
    try:
        StorageSpec(root=str(root))
    except ValueError as exc:
        raise ConfigError(f"storage root {root}: {exc}") from None
    return root


def _local_silo(reply: EnrollmentReply, kit_dir: Path) -> dict[str, Any]:
    """The silo's spec as its request left it, else as its kit holds it."""
    local = kit_dir / LOCAL_SILO_FILE
    if local.is_file():
        data, _ = load_yaml_mapping(local)
        return data
    if (kit_dir / KIT_FILE).is_file():
        kit = load_kit(kit_dir)
        if kit.silo is not None and kit.name == reply.name:
            return kit.silo.model_dump(mode="json", exclude_defaults=True)
    raise ConfigError(
        f"this folder holds neither {LOCAL_SILO_FILE} nor a kit of silo '{reply.name}': "
        "finish the enrollment in the folder its request was made in",
        file=str(kit_dir),
    )


def _kit_silo_spec(reply: EnrollmentReply, kit_dir: Path, root: str) -> SiloSpec:
    data = dict(_local_silo(reply, kit_dir))
    data |= {
        "name": reply.name,
        "storage": {"root": root},
        "approval": {"host": reply.approval_host, "port": reply.approval_port},
    }
    data.pop("policy", None)  # the kit's policy.yaml is the silo's policy
    return validate_model(SiloSpec, data, kit_dir / LOCAL_SILO_FILE)


def _policy_text(
    reply: EnrollmentReply, silo: SiloSpec | None, kit_dir: Path, policy: Path | None
) -> str | None:
    """What the silo's ``policy.yaml`` becomes (``None``: keep the one it has)."""
    if reply.role is not Role.SILO:
        if policy is not None:
            raise ConfigError(f"'{reply.name}' is a {reply.role}: only a silo has a policy")
        return None
    if policy is None:
        local = kit_dir / LOCAL_SILO_FILE
        if local.is_file():
            written = load_yaml_mapping(local)[0].get("policy")
            policy = Path(written) if isinstance(written, str) else None
    if policy is not None:
        load_policy(Path(policy))
        return Path(policy).read_text(encoding="utf-8")
    if (kit_dir / POLICY_FILE).is_file():
        return None
    text = default_policy_yaml(reply.trusted_keys)
    return text


# -- any kit: its storage root is its own ----------------------------------------------------


def set_storage(kit_dir: Path, storage: Path) -> tuple[Kit, Path]:
    """Point the kit in ``kit_dir`` at storage root ``storage`` (made absolute, created mode
    0700); returns the new kit and the old root. Data in the old root stays where it is."""
    kit = load_kit(kit_dir)
    if kit.storage_root is None:
        raise ConfigError(
            f"'{kit.name}' is a {kit.role}: it keeps no data, so it has no storage root",
            file=str(kit.kit_dir),
        )
    old = kit.storage_path
    root = _absolute_root(storage)
    update: dict[str, Any] = {"storage_root": str(root)}
    if kit.silo is not None:
        storage_spec = kit.silo.storage.model_copy(update={"root": str(root)})
        update["silo"] = kit.silo.model_copy(update={"storage": storage_spec})
    moved = Kit.model_validate({**kit.model_dump(), **update})
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_kit(moved, kit.kit_dir)
    except OSError as exc:
        raise ProvisioningError(f"cannot set the storage root of '{kit.name}': {exc}") from exc
    return load_kit(kit.kit_dir), old
