"""The network of a job step that spans several machines of a silo, and nothing more.

A step on one machine needs no network: its sandbox has a network namespace of its own
with only ``lo``. A step on several machines needs its ranks to reach each other, and
only each other. On each machine the step gets a network namespace of its own, holding a
macvlan interface on the machine's card on the silo's network, with one of the job
addresses the silo reserved for that machine, and a route to each other machine's job
address of the step, and no other route: no default gateway, no subnet. The orchestrator,
the machines' own addresses (where node services listen), other silos and any other
address are unreachable from inside (``Network is unreachable``). The sandbox runs in
that namespace (``ip netns exec``, bubblewrap with ``--share-net``), and deleting the
namespace removes the interface with it.

It needs ``ip`` (iproute2) and the right to manage network namespaces (root).
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass

from fedsilo.errors import FedsiloError

__all__ = ["INTERFACE", "RENDEZVOUS_PORT", "JobNetwork"]

INTERFACE = "fsjob0"
"""The name of the step's interface inside its namespace (the ranks bind to it)."""

RENDEZVOUS_PORT = 29400
"""Where rank 0's machine serves the ranks' rendezvous: the namespace is the step's own."""


def _ip(*args: str) -> None:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    try:
        done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FedsiloError(f"cannot run 'ip {' '.join(args)}': {exc}") from exc
    if done.returncode != 0:
        raise FedsiloError(
            f"'ip {' '.join(args)}' failed: {done.stderr.strip() or done.returncode}; a step "
            "on several machines needs root (network namespaces) and iproute2"
        )


@dataclass
class JobNetwork:
    """One machine's network namespace for one job step (create, then :meth:`close`)."""

    name: str
    parent: str
    address: str
    peers: tuple[str, ...]
    created: bool = False

    @classmethod
    def for_step(
        cls, step: str, *, parent: str, address: str, peers: tuple[str, ...]
    ) -> JobNetwork:
        """The namespace of ``step`` (an id unique on this machine) on card ``parent``."""
        for value in (address, *peers):
            ipaddress.ip_address(value)  # a ValueError for anything but an address
        digest = hashlib.sha256(step.encode()).hexdigest()[:12]
        return cls(name=f"fsj-{digest}", parent=parent, address=address, peers=peers)

    def create(self) -> None:
        """Make the namespace, its interface, its address and its routes to the peers."""
        ns, link = self.name, f"fsj{self.name[4:12]}"
        _ip("netns", "add", ns)
        self.created = True
        try:
            _ip(
                "link",
                "add",
                "link",
                self.parent,
                "name",
                link,
                "type",
                "macvlan",
                "mode",
                "bridge",
            )
            try:
                _ip("link", "set", link, "netns", ns)
            except FedsiloError:
                _ip("link", "del", link)
                raise
            _ip("-n", ns, "link", "set", link, "name", INTERFACE)
            bits = 128 if ":" in self.address else 32
            _ip("-n", ns, "addr", "add", f"{self.address}/{bits}", "dev", INTERFACE)
            _ip("-n", ns, "link", "set", INTERFACE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            for peer in self.peers:
                peer_bits = 128 if ":" in peer else 32
                _ip("-n", ns, "route", "add", f"{peer}/{peer_bits}", "dev", INTERFACE)
        except BaseException:
            self.close()
            raise

    def prefix(self) -> list[str]:
        """The argv that runs a command inside the namespace."""
        return [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.name]

    def close(self) -> None:
        """Delete the namespace (and its interface with it); idempotent."""
        if self.created:
            self.created = False
            try:
                _ip("netns", "del", self.name)
            except FedsiloError:
                return
