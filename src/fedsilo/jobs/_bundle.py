"""Job bundles: a code folder packed with a manifest of every file's sha256.

The bundle is a deterministic gzip'd tar holding the code files, ``MANIFEST.json`` and,
when signed, ``SIGNATURE.json``. The manifest's own sha256 is the bundle's identity
(``Manifest.digest``): it is what a signature covers and what a silo checks every
unpacked file against. A bundle packed with a declared model also holds ``MODEL.json``
(:mod:`fedsilo.jobs._layout`), listed in the manifest like any code file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict

from fedsilo.errors import ConfigError, SignatureError
from fedsilo.jobs._layout import MODEL_NAME, ModelLayout
from fedsilo.jobs._signing import BundleSignature, sign_digest

__all__ = ["MAX_BUNDLE_BYTES", "Manifest", "bundle_signature", "pack_bundle", "unpack_bundle"]

MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "SIGNATURE.json"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


class Manifest(BaseModel):
    """Every file of a bundle with its sha256, keyed by POSIX relative path."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: dict[str, str]

    def canonical(self) -> bytes:
        """The exact bytes the digest is computed over (sorted keys, no spaces)."""
        return json.dumps(self.files, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """sha256 of the canonical manifest: the bundle's identity."""
        return hashlib.sha256(self.canonical()).hexdigest()


def _code_files(code_dir: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(code_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for d in dirs:
            if (Path(root) / d).is_symlink():
                raise ConfigError(
                    "symbolic links cannot be bundled; copy the folder into the code folder",
                    file=str(Path(root) / d),
                )
        for name in sorted(names):
            path = Path(root) / name
            if name.endswith(_SKIP_SUFFIXES) or name in (MANIFEST_NAME, SIGNATURE_NAME):
                continue
            if path.is_symlink():
                raise ConfigError(
                    "symbolic links cannot be bundled; copy the file into the code folder",
                    file=str(path),
                )
            files.append(path)
    return files


def pack_bundle(
    code_dir: Path,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    model: ModelLayout | None = None,
) -> tuple[bytes, Manifest]:
    """Pack ``code_dir`` into bundle bytes and return them with the manifest.

    The archive is deterministic (sorted entries, zeroed times and owners), so the same
    code always gives the same bytes and digest. With ``signing_key``, the bundle also
    carries ``SIGNATURE.json``: an Ed25519 signature over the manifest's digest. With
    ``model`` (from :func:`~fedsilo.jobs.declare_model`), it carries ``MODEL.json``, in
    the manifest and so under the signature; it replaces any ``MODEL.json`` of the folder.
    """
    if not code_dir.is_dir():
        raise ConfigError("the job's code folder does not exist", file=str(code_dir))
    files = _code_files(code_dir)
    if not files:
        raise ConfigError("the job's code folder holds no files", file=str(code_dir))
    contents = {p.relative_to(code_dir).as_posix(): p.read_bytes() for p in files}
    if model is not None:
        contents[MODEL_NAME] = model.canonical()
    manifest = Manifest(files={k: hashlib.sha256(v).hexdigest() for k, v in contents.items()})
    raw = io.BytesIO()
    entries = [(MANIFEST_NAME, manifest.canonical())]
    if signing_key is not None:
        signature = sign_digest(manifest.digest, signing_key)
        entries.append((SIGNATURE_NAME, signature.model_dump_json().encode()))
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [*entries, *sorted(contents.items())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(raw.getvalue(), mtime=0)
    if len(packed) > MAX_BUNDLE_BYTES:
        raise ConfigError(
            f"the packed code is {len(packed)} bytes, over the {MAX_BUNDLE_BYTES} byte limit; "
            "keep data and weights out of the code folder",
            file=str(code_dir),
        )
    return packed, manifest


def _gunzip_bounded(data: bytes) -> bytes:
    """Decompress, refusing to grow past :data:`MAX_UNPACKED_BYTES` (a gzip bomb)."""
    inflater = zlib.decompressobj(wbits=31)
    out = inflater.decompress(data, MAX_UNPACKED_BYTES + 1)
    if len(out) > MAX_UNPACKED_BYTES or inflater.unconsumed_tail:
        raise SignatureError(f"the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes; refused")
    if not inflater.eof:
        raise SignatureError("the bundle is truncated")
    return out


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise SignatureError(f"bundle entry '{name}' escapes the bundle folder")
    return path


def unpack_bundle(data: bytes, dest: Path) -> Manifest:
    """Unpack bundle bytes into ``dest`` and check every file against the manifest.

    Any file that is modified, added or missing relative to the manifest raises
    :class:`SignatureError`; ``dest`` is then left absent, never half-written.
    """
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(_gunzip_bounded(data)), mode="r") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    raise SignatureError(f"bundle entry '{member.name}' is not a regular file")
                path = _safe_member_path(member.name)
                extracted = tar.extractfile(member)
                assert extracted is not None
                contents[path.as_posix()] = extracted.read()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise SignatureError(f"the bundle is not a valid archive: {exc}") from exc
    if MANIFEST_NAME not in contents:
        raise SignatureError("the bundle has no manifest")
    try:
        manifest = Manifest(files=json.loads(contents.pop(MANIFEST_NAME)))
    except ValueError as exc:
        raise SignatureError(f"the bundle's manifest is malformed: {exc}") from exc
    signature_bytes = contents.pop(SIGNATURE_NAME, None)
    if signature_bytes is not None:
        try:
            BundleSignature.model_validate_json(signature_bytes)
        except ValueError as exc:
            raise SignatureError(f"the bundle's signature file is malformed: {exc}") from exc
    added = sorted(set(contents) - set(manifest.files))
    missing = sorted(set(manifest.files) - set(contents))
    changed = sorted(
        name
        for name, blob in contents.items()
        if name in manifest.files and hashlib.sha256(blob).hexdigest() != manifest.files[name]
    )
    problems = [f"added: {', '.join(added)}"] if added else []
    problems += [f"missing: {', '.join(missing)}"] if missing else []
    problems += [f"modified: {', '.join(changed)}"] if changed else []
    if problems:
        raise SignatureError("the bundle does not match its manifest (" + "; ".join(problems) + ")")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".bundle-"))
    try:
        for name, blob in contents.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
        (staging / MANIFEST_NAME).write_bytes(manifest.canonical())
        if signature_bytes is not None:
            (staging / SIGNATURE_NAME).write_bytes(signature_bytes)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def bundle_signature(unpacked: Path) -> BundleSignature | None:
    """The signature an unpacked bundle carried, or ``None`` for an unsigned bundle."""
    path = unpacked / SIGNATURE_NAME
    if not path.is_file():
        return None
    return BundleSignature.model_validate_json(path.read_bytes())
