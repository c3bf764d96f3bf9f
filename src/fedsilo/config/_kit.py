"""A kit: what one participant of a federation may know, in one folder.

``fedsilo provision`` writes one kit per participant: its certificate and private key, the
federation CA certificate, and ``kit.yaml`` (this module's :class:`Kit`). A silo's kit
holds its own storage root and spec; the orchestrator's kit lists the silos by name and
compute only, and the fingerprints of every participant's certificate, never a path that
reaches silo data.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from fedsilo._suggest import did_you_mean, listing
from fedsilo.config._federation import SiloSpec
from fedsilo.config._yamlio import load_yaml_mapping, validate_model
from fedsilo.errors import ConfigError

__all__ = [
    "ADMIN_CERT_FILE",
    "ADMIN_KEY_FILE",
    "APPROVAL_CERT_FILE",
    "APPROVAL_KEY_FILE",
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "KIT_FILE",
    "POLICY_FILE",
    "SIGNING_KEY_FILE",
    "Kit",
    "ParticipantInfo",
    "Role",
    "SiloInfo",
    "cert_fingerprint",
    "load_kit",
    "write_atomic",
    "write_kit",
]

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.crt"
APPROVAL_CERT_FILE = "approval.crt"
APPROVAL_KEY_FILE = "approval.key"
ADMIN_CERT_FILE = "admin.crt"
ADMIN_KEY_FILE = "admin.key"
POLICY_FILE = "policy.yaml"
SIGNING_KEY_FILE = "signing.key"
KIT_FILE = "kit.yaml"
RENEWAL_DIR = "renewal"
"""Where a kit's renewed keys wait for their certificates (``fedsilo certs renew``)."""
INSTALLING_FILE = "installing"
"""In ``RENEWAL_DIR`` while the kit's files are being swapped for the renewed ones."""

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Role(str, Enum):  # noqa: UP042 - a str mixin keeps `== "silo"` working
    """What a participant is; it is also the OU of its certificate."""

    ORCHESTRATOR = "orchestrator"
    SILO = "silo"
    SUBMITTER = "submitter"
    ADMIN = "admin"  # the federation's administrator (see docs/access.md)

    def __str__(self) -> str:
        return self.value


# people who call the orchestrator and keep nothing of the federation's on their machine
_NO_STORAGE = (Role.SUBMITTER, Role.ADMIN)


class SiloInfo(BaseModel):
    """What the orchestrator knows of a silo: its name and compute, never its storage."""

    model_config = _FROZEN

    name: str
    compute: str


class ParticipantInfo(BaseModel):
    """A participant's identity: name, role and the SHA-256 of its DER certificate (hex).

    ``admin`` marks a submitter who also administers the federation (named in both
    ``submitters`` and ``admins`` of the federation spec): one kit, both roles.
    """

    model_config = _FROZEN

    name: str
    role: Role
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    admin: bool = False

    @property
    def roles(self) -> frozenset[Role]:
        """Every role this participant holds at the orchestrator."""
        return frozenset({self.role, Role.ADMIN} if self.admin else {self.role})


class Kit(BaseModel):
    """One participant's ``kit.yaml``; the file paths come from the folder it was loaded from.

    ``storage_root`` is absolute (``None`` for a submitter). ``silo`` is set in that silo's
    own kit only; ``silos`` and ``participants`` in the orchestrator's kit only.
    """

    model_config = _FROZEN

    federation: str
    role: Role
    name: str
    orchestrator_host: str
    orchestrator_port: Annotated[int, Field(ge=1, le=65535)]
    storage_root: str | None = None
    approval_host: str | None = None
    approval_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    silo: SiloSpec | None = None
    silos: tuple[SiloInfo, ...] = ()
    participants: tuple[ParticipantInfo, ...] = ()

    _kit_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fits_role(self) -> Kit:
        if self.role is not Role.ORCHESTRATOR and (self.silos or self.participants):
            raise ValueError("only the orchestrator's kit lists silos and participants")
        if self.role is Role.SILO:
            if self.silo is None or self.silo.name != self.name:
                raise ValueError(f"a silo's kit must hold its own silo spec ('{self.name}')")
            if self.approval_host is None or self.approval_port is None:
                raise ValueError("a silo's kit must give its approval endpoint's host and port")
        elif self.silo is not None:
            raise ValueError("only a silo's kit holds a silo spec")
        if (self.role in _NO_STORAGE) != (self.storage_root is None):
            raise ValueError(
                "a submitter or administrator has no storage root; every other participant has one"
            )
        if self.storage_root is not None and not Path(self.storage_root).is_absolute():
            raise ValueError(f"storage_root must be absolute, not {self.storage_root!r}")
        return self

    @property
    def orchestrator_url(self) -> str:
        """The orchestrator's base URL, ``https://host:port``."""
        return f"https://{self.orchestrator_host}:{self.orchestrator_port}"

    @property
    def kit_dir(self) -> Path:
        """The absolute folder this kit was loaded from (see :func:`load_kit`)."""
        if self._kit_dir is None:
            raise ConfigError(f"kit '{self.name}' was not loaded from a folder")
        return self._kit_dir

    @property
    def cert_file(self) -> Path:
        """This participant's certificate (PEM)."""
        return self.kit_dir / CERT_FILE

    @property
    def key_file(self) -> Path:
        """This participant's private key (PEM, mode 0600)."""
        return self.kit_dir / KEY_FILE

    @property
    def approval_url(self) -> str:
        """The silo's approval endpoint, ``https://host:port`` (silo kits only)."""
        if self.approval_host is None or self.approval_port is None:
            raise ConfigError(f"'{self.name}' is a {self.role}; only silos have approval endpoints")
        return f"https://{self.approval_host}:{self.approval_port}"

    @property
    def approval_cert_file(self) -> Path:
        """The approval endpoint's server certificate (silo kits)."""
        return self.kit_dir / APPROVAL_CERT_FILE

    @property
    def approval_key_file(self) -> Path:
        """The approval endpoint's private key (silo kits, mode 0600)."""
        return self.kit_dir / APPROVAL_KEY_FILE

    @property
    def admin_cert_file(self) -> Path:
        """The silo administrator's client certificate (silo kits)."""
        return self.kit_dir / ADMIN_CERT_FILE

    @property
    def admin_key_file(self) -> Path:
        """The silo administrator's private key (silo kits, mode 0600)."""
        return self.kit_dir / ADMIN_KEY_FILE

    @property
    def policy_file(self) -> Path:
        """The silo's approval policy (silo kits)."""
        return self.kit_dir / POLICY_FILE

    @property
    def signing_key_file(self) -> Path:
        """The submitter's Ed25519 code-signing key (submitter kits, mode 0600)."""
        return self.kit_dir / SIGNING_KEY_FILE

    @property
    def ca_file(self) -> Path:
        """The federation CA certificate (PEM) that every peer's certificate chains to."""
        return self.kit_dir / CA_FILE

    @property
    def storage_path(self) -> Path:
        """``storage_root`` as a path; :class:`ConfigError` for a submitter, which has none."""
        if self.storage_root is None:
            raise ConfigError(f"participant '{self.name}' ({self.role}) has no storage")
        return Path(self.storage_root)

    def participant(self, name: str) -> ParticipantInfo:
        """The identity of participant ``name`` (orchestrator's kit only)."""
        for info in self.participants:
            if info.name == name:
                return info
        known = [p.name for p in self.participants]
        raise ConfigError(
            f"kit '{self.name}' knows no participant '{name}'{did_you_mean(name, known)}; "
            f"known: {listing(known) if known else 'none in this kit'}"
        )

    def located(self, kit_dir: Path) -> Kit:
        """A copy of this kit whose file paths point into ``kit_dir``."""
        copy = self.model_copy()
        copy._kit_dir = kit_dir.absolute()
        return copy


def cert_fingerprint(der: bytes) -> str:
    """The SHA-256 of a DER certificate, as lowercase hex (how kits identify peers)."""
    return hashlib.sha256(der).hexdigest()


def load_kit(path: Path, *, installing: bool = False) -> Kit:
    """Load the kit in folder ``path``; :class:`ConfigError` if it is not a complete kit.

    A kit whose renewed certificates are being installed holds some old files and some new
    ones: it is refused, unless ``installing`` (the install that finishes it).
    """
    kit_dir = Path(path).expanduser()
    kit_file = kit_dir / KIT_FILE
    if not kit_dir.is_dir():
        raise ConfigError("no such kit folder", file=str(kit_dir))
    if not installing and (kit_dir / RENEWAL_DIR / INSTALLING_FILE).is_file():
        raise ConfigError(
            "the install of this kit's renewed certificates stopped half-way (the old files "
            "are kept as *.previous): finish it by running fedsilo certs install again with "
            f"the same reply and --kit {shlex.quote(str(kit_dir.absolute()))}",
            file=str(kit_dir),
        )
    data, index = load_yaml_mapping(kit_file)
    kit = validate_model(Kit, data, kit_file, index)
    for name in (CERT_FILE, KEY_FILE, CA_FILE):
        if not (kit_dir / name).is_file():
            raise ConfigError(f"the kit is incomplete: {name} is missing", file=str(kit_dir))
    return kit.located(kit_dir)


def write_kit(kit: Kit, kit_dir: Path) -> Path:
    """Write ``kit`` as ``kit_dir/kit.yaml`` (without its file paths); returns that file."""
    kit_file = kit_dir / KIT_FILE
    text = yaml.safe_dump(kit.model_dump(mode="json"), sort_keys=False)
    write_atomic(kit_file, text.encode("utf-8"))
    return kit_file


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place:
    a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
