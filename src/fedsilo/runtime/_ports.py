"""Picking loopback ports for a federation run on one machine.

A federation needs a block of consecutive ports: the orchestrator's, then one per silo's
approval endpoint (the orchestrator's port + 1 + the silo's index). A block is chosen below
the kernel's ephemeral range (32768 and up on Linux): a free port in that range can be
taken by an outgoing connection's local port by the time the endpoint binds it.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_port_block"]

_LOW, _HIGH = 20000, 32000


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are all free now."""
    if not 1 <= count <= _HIGH - _LOW:
        raise ValueError(f"a block of {count} ports does not fit in {_LOW}-{_HIGH}")
    for _ in range(200):
        base = random.randrange(_LOW, _HIGH - count)
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} free consecutive loopback ports in {_LOW}-{_HIGH}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
