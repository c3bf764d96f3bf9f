"""Shamir secret sharing of 32-byte secrets over the prime field of ``2**521 - 1``.

Why this field: a Mersenne prime larger than any 32-byte secret, so one secret is one field
element (no splitting) and reduction is cheap. Coefficients are drawn uniformly from the
field with the caller's generator: :class:`secrets.SystemRandom` in production (the same
source as :func:`secrets.randbelow`), a seeded :class:`random.Random` only in tests.

A share is the pair ``(x, f(x))``; the x-coordinate of a client is its 1-based position in
the sorted roster, so it never travels. Reconstruction is Lagrange interpolation at 0.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import lru_cache

from fedsilo.privacy.secagg._errors import SecAggError

__all__ = [
    "ELEMENT_BYTES",
    "PRIME",
    "SECRET_BYTES",
    "element_from_bytes",
    "element_to_bytes",
    "reconstruct",
    "split",
]

PRIME = 2**521 - 1
ELEMENT_BYTES = (PRIME.bit_length() + 7) // 8  # 66
SECRET_BYTES = 32


def split(secret: bytes, xs: Sequence[int], threshold: int, rng: random.Random) -> list[int]:
    """Share ``secret`` so that any ``threshold`` of the points ``xs`` recover it.

    Returns ``f(x)`` for each ``x`` in ``xs`` (same order), where ``f`` is a random
    polynomial of degree ``threshold - 1`` with ``f(0) = secret``.
    """
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret must be {SECRET_BYTES} bytes, not {len(secret)}")
    if not 2 <= threshold <= len(xs):
        raise SecAggError(f"threshold {threshold} must be between 2 and {len(xs)} parties")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share x-coordinates must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [rng.randrange(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares.append(y)
    return shares


@lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The Lagrange coefficients that interpolate the points ``xs`` at 0.

    They depend only on who answered, so one (cached) set serves every secret of a round.
    """
    coefficients = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """Recover a 32-byte secret from at least ``threshold`` shares ``{x: f(x)}``.

    Exactly ``threshold`` shares (the lowest x-coordinates) are used; more add nothing.
    """
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot recover a secret of threshold {threshold}")
    xs = tuple(sorted(shares)[:threshold])
    secret = sum(c * shares[x] for c, x in zip(_lagrange_at_zero(xs), xs, strict=True)) % PRIME
    if secret.bit_length() > 8 * SECRET_BYTES:
        raise SecAggError("the shares are inconsistent: they do not recover a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def element_to_bytes(value: int) -> bytes:
    """A field element as fixed-width big-endian bytes (what travels in messages)."""
    return value.to_bytes(ELEMENT_BYTES, "big")


def element_from_bytes(data: bytes) -> int:
    """The inverse of :func:`element_to_bytes`, refusing anything outside the field."""
    if len(data) != ELEMENT_BYTES:
        raise SecAggError(f"a share must be {ELEMENT_BYTES} bytes, not {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise SecAggError("a share is not an element of the field")
    return value
