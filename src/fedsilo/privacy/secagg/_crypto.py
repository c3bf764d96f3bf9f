"""The cryptographic primitives of secure aggregation, all from ``cryptography``.

- X25519 key agreement: ``c`` keys encrypt shares between two clients, ``s`` keys give
  each pair of clients a common pairwise-mask seed.
- HKDF-SHA256 turns every agreement into a key bound to its purpose, the job and (for
  masks) the round, so no key serves two purposes.
- AES-256-GCM encrypts each share, with associated data naming sender, receiver and job:
  a share replayed to another receiver or job fails to authenticate.
- AES-256-CTR is the PRG that expands a 32-byte seed into a mask of uint32 or uint64
  words; its keystream is written, chunk by chunk, into one reused buffer and added
  straight into the vector, so masking 10M elements allocates no 10M-element mask.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsilo.privacy.secagg._errors import SecAggProtocolError, ShareDecryptionError

__all__ = [
    "KEY_BYTES",
    "apply_mask",
    "apply_masks",
    "decrypt_share",
    "encrypt_share",
    "new_private_key",
    "pairwise_seed",
    "public_key",
    "share_key",
]

KEY_BYTES = 32
_NONCE_BYTES = 12
_CHUNK_WORDS = 1 << 17  # 1 MiB of keystream per step (64-bit words), 512 KiB (32-bit)
_ZEROS = bytes(8 * _CHUNK_WORDS)
_BLOCK_BYTES = 16

Vector = npt.NDArray[np.unsignedinteger[Any]]  # uint32 or uint64 words


def _info(purpose: str, job_id: str, round: int | None = None) -> bytes:
    """An unambiguous HKDF ``info``: protocol version, purpose, job and round."""
    return json.dumps(["fedsilo-secagg-v1", purpose, job_id, round]).encode()


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(material)


def new_private_key(rng: random.Random) -> bytes:
    """32 random bytes: an X25519 private key (clamping happens inside the library)."""
    return rng.randbytes(KEY_BYTES)


def public_key(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of ``private``."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _agree(private: bytes, peer_public: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
        return X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as exc:  # wrong length, or a low-order point giving an all-zero secret
        raise SecAggProtocolError(f"a peer's X25519 public key is unusable: {exc}") from exc


def share_key(private_c: bytes, peer_public_c: bytes, job_id: str) -> bytes:
    """The AES-GCM key two clients share for the Shamir shares they send each other."""
    return _hkdf(_agree(private_c, peer_public_c), _info("share-key", job_id))


def pairwise_seed(private_s: bytes, peer_public_s: bytes, job_id: str, round: int) -> bytes:
    """The seed ``s_uv`` of the pairwise mask of two clients in one round."""
    return _hkdf(_agree(private_s, peer_public_s), _info("pairwise-seed", job_id, round))


def _associated_data(job_id: str, sender: str, receiver: str) -> bytes:
    return json.dumps(["fedsilo-secagg-v1", "share", job_id, sender, receiver]).encode()


def encrypt_share(
    key: bytes, plaintext: bytes, *, job_id: str, sender: str, receiver: str, rng: random.Random
) -> bytes:
    """AES-256-GCM of ``plaintext``: the random 12-byte nonce followed by the ciphertext."""
    nonce = rng.randbytes(_NONCE_BYTES)
    ad = _associated_data(job_id, sender, receiver)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt_share(key: bytes, blob: bytes, *, job_id: str, sender: str, receiver: str) -> bytes:
    """Decrypt what :func:`encrypt_share` made, or raise :class:`ShareDecryptionError`."""
    ad = _associated_data(job_id, sender, receiver)
    try:
        return AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], ad)
    except (InvalidTag, ValueError) as exc:
        raise ShareDecryptionError(receiver, sender) from exc


def apply_mask(vector: Vector, seed: bytes, *, job_id: str, round: int, sign: int) -> None:
    """Add (``sign=+1``) or subtract (``sign=-1``) ``PRG(seed, round)`` to ``vector`` in place.

    The PRG is AES-256-CTR under ``HKDF(seed, info=round)`` with a zero counter block (each
    key is used for one stream only); its keystream, read as little-endian words of the
    vector's size (uint32 or uint64), is uniform modulo ``2**32`` or ``2**64``. Arithmetic
    wraps modulo the same power of two, as the protocol needs.
    """
    apply_masks(vector, [(seed, sign)], job_id=job_id, round=round)


def apply_masks(
    vector: Vector, seeds: Iterable[tuple[bytes, int]], *, job_id: str, round: int
) -> None:
    """:func:`apply_mask` for each ``(seed, sign)``, through one reused keystream buffer."""
    if vector.dtype not in (np.uint32, np.uint64):
        raise ValueError(f"masks are added to uint32 or uint64 words, not {vector.dtype}")
    width = vector.dtype.itemsize
    words_dtype = vector.dtype.newbyteorder("<")
    chunk = max(1, min(_CHUNK_WORDS, vector.size))
    # update_into needs room for one block more than it writes
    buffer = bytearray(width * chunk + _BLOCK_BYTES - 1)
    zeros = memoryview(_ZEROS)
    for seed, sign in seeds:
        if sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")
        key = _hkdf(seed, _info("prg", job_id, round))
        stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        operation = np.add if sign == 1 else np.subtract
        for start in range(0, vector.size, chunk):
            words = min(chunk, vector.size - start)
            stream.update_into(zeros[: width * words], buffer)
            mask = np.frombuffer(buffer, dtype=words_dtype, count=words)
            part = vector[start : start + words]
            operation(part, mask, out=part)
