"""Code signing: Ed25519 signatures over a bundle manifest's digest.

A submitter signs the manifest digest (which covers every file of the bundle); a silo
recomputes the manifest from the files it received and checks the signature against the
public keys its own policy trusts. Key files:

* private key: PEM (PKCS#8, unencrypted), mode 0600;
* public key: one line ``ed25519 <base64 of the 32 raw bytes> [comment]`` (``.pub``),
  the form a silo's policy lists under ``trusted_keys``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from fedsilo.errors import ConfigError

__all__ = [
    "BundleSignature",
    "SignatureCheck",
    "SigningStatus",
    "check_signature",
    "key_id",
    "load_private_key",
    "new_signing_key",
    "parse_public_key",
    "public_key_line",
    "sign_digest",
]


class SigningStatus(StrEnum):
    """What a silo concluded about a bundle's signature."""

    TRUSTED = "trusted"  # valid, by a key the silo trusts
    UNTRUSTED = "untrusted"  # valid, by a key the silo does not trust
    INVALID = "invalid"  # does not verify (the code or the manifest changed after signing)
    UNSIGNED = "unsigned"


class BundleSignature(BaseModel):
    """A signature shipped in a bundle: the signer's public key and the signature, base64."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: str = "ed25519"
    public_key: str
    signature: str


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of checking a bundle's signature: status, and which key signed."""

    status: SigningStatus
    key_id: str | None = None
    key_name: str | None = None


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key_b64: str) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


def public_key_line(public: Ed25519PublicKey, comment: str = "") -> str:
    """The ``.pub`` form of a public key."""
    line = f"ed25519 {base64.b64encode(_raw(public)).decode()}"
    return f"{line} {comment}".rstrip()


def parse_public_key(text: str, *, where: str = "public key") -> str:
    """The base64 raw key of a ``.pub`` line; :class:`ConfigError` naming ``where`` if bad."""
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != "ed25519":
        raise ConfigError(f"{where}: expected 'ed25519 <base64 key>', got {text.strip()[:40]!r}")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: not a 32-byte Ed25519 public key in base64")
    return parts[1]


def new_signing_key(path: Path, *, comment: str = "") -> str:
    """Create a key pair: ``path`` (private, 0600) and ``path`` + ``.pub``; return the line."""
    if path.exists():
        raise ConfigError("a key already exists there; choose another path", file=str(path))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    line = public_key_line(key.public_key(), comment)
    Path(f"{path}.pub").write_text(line + "\n")
    return line


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key file; :class:`ConfigError` naming the file if it is not one."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read a signing key: {exc}", file=str(path)) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("not an Ed25519 private key", file=str(path))
    return key


def sign_digest(digest: str, key: Ed25519PrivateKey) -> BundleSignature:
    """Sign a manifest digest (its hex text, as bytes)."""
    return BundleSignature(
        public_key=base64.b64encode(_raw(key.public_key())).decode(),
        signature=base64.b64encode(key.sign(digest.encode())).decode(),
    )


def check_signature(
    digest: str, signature: BundleSignature | None, trusted: Mapping[str, str]
) -> SignatureCheck:
    """Check ``signature`` over ``digest``; ``trusted`` maps key names to base64 raw keys."""
    if signature is None:
        return SignatureCheck(SigningStatus.UNSIGNED)
    try:
        raw = base64.b64decode(signature.public_key, validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw)
        public.verify(base64.b64decode(signature.signature, validate=True), digest.encode())
    except (InvalidSignature, ValueError, binascii.Error):
        return SignatureCheck(SigningStatus.INVALID)
    kid = key_id(signature.public_key)
    for name, key in trusted.items():
        if key == signature.public_key:
            return SignatureCheck(SigningStatus.TRUSTED, kid, name)
    return SignatureCheck(SigningStatus.UNTRUSTED, kid)
