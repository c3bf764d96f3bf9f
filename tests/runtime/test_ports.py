"""Port blocks for a federation on one machine: free, consecutive, below the ephemeral range."""

from __future__ import annotations

import random
import socket

import pytest

from fedsilo.runtime import _ports, free_port_block


def test_a_block_is_free_and_below_the_ephemeral_range() -> None:
    base = free_port_block(11)
    assert base >= 20000 and base + 11 <= 32000
    for port in range(base, base + 11):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_block_with_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        clear = free_port_block(4)
        candidates = iter([port - 2, clear])  # the first block holds the taken port
        monkeypatch.setattr(_ports, "_LOW", 1024)
        monkeypatch.setattr(_ports, "_HIGH", 65535)
        monkeypatch.setattr(random, "randrange", lambda *_args: next(candidates))
        assert free_port_block(4) == clear
    finally:
        taken.close()


def test_an_impossible_block_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        free_port_block(0)
