"""Content-addressed blob files in the orchestrator's storage (bundles, parameters)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fedsilo.tensors import Parameters, save_parameters

__all__ = ["BlobStore", "DigestMismatch", "TooLarge", "valid_digest"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_BATCH = 1 << 20  # bytes of an upload hashed and written in one go, off the event loop
_INLINE = 1 << 16  # fewer bytes than this are hashed and written on the loop itself


def valid_digest(digest: str) -> bool:
    """Whether ``digest`` looks like a hex sha256."""
    return bool(_DIGEST.match(digest))


class DigestMismatch(Exception):
    """The received bytes do not hash to the digest they were sent under."""


class TooLarge(Exception):
    """The upload went past the size limit."""


class BlobStore:
    """Files named by their sha256; writes are atomic and idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    async def receive(self, digest: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        """Stream an upload to disk, checking size and digest; return the size.

        Nothing lands under ``digest`` unless the bytes hash to it: a corrupted upload is
        refused (:class:`DigestMismatch`) and can be retried. An existing blob is kept.
        The bytes are hashed and written on a worker thread, a batch of about
        ``_BATCH`` bytes at a time, so a large upload holds up no other request (the last
        few kilobytes of one, on the loop).
        """
        target = self.path(digest)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".up-")
        hasher = hashlib.sha256()
        size = 0
        batch: list[bytes] = []
        batched = 0

        def write(parts: list[bytes]) -> None:
            for part in parts:
                hasher.update(part)
                fh.write(part)

        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"upload exceeds the {limit} byte limit")
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= _BATCH:
                        await asyncio.to_thread(write, batch)
                        batch, batched = [], 0
                if batched >= _INLINE:
                    await asyncio.to_thread(write, batch)
                else:  # a small upload's last bytes: quicker here than a thread away
                    write(batch)
            if hasher.hexdigest() != digest:
                raise DigestMismatch(
                    f"received {size} bytes with sha256 {hasher.hexdigest()}, not {digest}"
                )
            if target.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def put_parameters(self, params: Parameters) -> str:
        """Store parameters the orchestrator computed (a global model); return the digest."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".put-")
        os.close(fd)
        try:
            digest = save_parameters(params, Path(tmp))
            target = self.path(digest)
            if target.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def put_bytes(self, data: bytes) -> str:
        """Store bytes produced by the orchestrator itself; return their digest."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".put-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        return digest
