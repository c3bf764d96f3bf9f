"""Network namespaces that play separate machines in the integration tests.

Each machine is a namespace of its own (``ip netns add``); cables are veth pairs, a switch
is a bridge in a namespace of its own. Everything runs on this one host, so traffic to the
test addresses must start inside one of these namespaces: from the host's own namespace
such an address has no route but the default gateway, which leads out of the machine.

Needs root and iproute2: :func:`require_root` skips a test without them, or fails it under
``FEDSILO_REQUIRE_CGROUPS=1``. :class:`Namespaces` deletes every namespace it added when
its ``with`` block ends, also on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from types import TracebackType

import pytest


def require_root(why: str) -> None:
    """Skip the test (fail it under ``FEDSILO_REQUIRE_CGROUPS=1``) without root or ``ip``."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = f"{why}: that needs root and iproute2"
        if os.environ.get("FEDSILO_REQUIRE_CGROUPS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def ip(*args: str) -> None:
    """Run ``ip ARGS``; raise with ip's own message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def inside(namespace: str, *argv: str) -> list[str]:
    """The command line that runs ``argv`` in ``namespace``."""
    return ["ip", "netns", "exec", namespace, *argv]


def cable(a: str, a_card: str, b: str, b_card: str) -> None:
    """A veth pair: card ``a_card`` in namespace ``a`` joined to ``b_card`` in ``b``."""
    ip("link", "add", a_card, "netns", a, "type", "veth", "peer", b_card, "netns", b)


class Namespaces:
    """The namespaces a test adds, all deleted when its ``with`` block ends."""

    def __init__(self) -> None:
        self.added: list[str] = []

    def add(self, name: str) -> str:
        """Add namespace ``name`` with its loopback up; return the name."""
        ip("netns", "add", name)
        self.added.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        for name in reversed(self.added):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.added.clear()


class Switch:
    """A switch (a bridge in a namespace of its own) on the subnet ``SUBNET.0/24``.

    :meth:`plug` adds a machine: a namespace cabled to the switch, with an address of the
    subnet and routes to the hosts it may reach. A machine given no ``reach`` sees the whole
    subnet; one given ``reach`` holds its address alone (``/32``) and a route to each host
    of ``reach``: every other address of the subnet is unreachable from it, refused by its
    own kernel before a packet leaves.
    """

    CARD = "fsh-eth"
    """The machine's card; the switch's end of machine ``.N`` is ``fsh-pN``."""

    def __init__(self, spaces: Namespaces, prefix: str, subnet: str) -> None:
        self.spaces, self.prefix, self.subnet = spaces, prefix, subnet
        self.namespace = spaces.add(f"{prefix}-switch")
        ip("-n", self.namespace, "link", "add", "fsh-br", "type", "bridge")
        ip("-n", self.namespace, "link", "set", "fsh-br", "up")

    def address(self, host: int) -> str:
        """The address of host ``host`` of the subnet."""
        return f"{self.subnet}.{host}"

    def plug(self, machine: str, host: int, *, reach: Iterable[int] | None = None) -> str:
        """Add machine ``machine`` at ``SUBNET.host``; return its namespace's name."""
        namespace = self.spaces.add(f"{self.prefix}-{machine}")
        port = f"fsh-p{host}"
        cable(namespace, self.CARD, self.namespace, port)
        ip("-n", self.namespace, "link", "set", port, "master", "fsh-br")
        ip("-n", self.namespace, "link", "set", port, "up")
        mask = 24 if reach is None else 32
        ip("-n", namespace, "addr", "add", f"{self.address(host)}/{mask}", "dev", self.CARD)
        ip("-n", namespace, "link", "set", self.CARD, "up")
        for other in reach or ():
            ip("-n", namespace, "route", "add", f"{self.address(other)}/32", "dev", self.CARD)
        return namespace
