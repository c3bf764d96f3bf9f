"""Real servers to fuzz: the orchestrator and one silo's approval endpoint, over mutual TLS.

Both run as the processes ``fedsilo up`` starts (``fedsilo orchestrator start`` and
``fedsilo approval serve``), on loopback, with the kits ``fedsilo provision`` wrote. No
agent runs: the tests call with each participant's own certificate and key, as that
participant or as an attacker holding its kit would.

``FEDSILO_FUZZ_EXAMPLES`` sets how many examples each operation gets (default 8, enough
for the suite's time budget); ``FEDSILO_FUZZ_EXAMPLES=2000`` is the long run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from fedsilo.config import Kit, Workspace, open_workspace
from fedsilo.provisioning import provision
from tests.integration.conftest import free_port

EXAMPLES = int(os.environ.get("FEDSILO_FUZZ_EXAMPLES", "8"))
"""Examples per operation and generation mode."""

SILOS = ("silo-a", "silo-b")


@dataclass(frozen=True)
class Identity:
    """A certificate and its key, as one participant (or its administrator) holds them."""

    name: str
    cert: tuple[str, str]
    ca: str

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request on a connection of its own (requests' environment CA bundle ignored)."""
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, url, verify=self.ca, cert=self.cert, **kwargs)


@dataclass
class Server:
    """One running server process: its address, log and the identities that call it."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Servers:
    workspace: Workspace
    orchestrator: Server
    approval: Server
    identities: dict[str, Identity]


def identity(kit: Kit, *, admin: bool = False) -> Identity:
    if admin:
        cert = (str(kit.admin_cert_file), str(kit.admin_key_file))
        return Identity(f"{kit.name} admin", cert, str(kit.ca_file))
    return Identity(kit.name, (str(kit.cert_file), str(kit.key_file)), str(kit.ca_file))


def _start(ws: Workspace, name: str, args: list[str], port: int) -> Server:
    ws.logs_dir.mkdir(parents=True, exist_ok=True)
    log = ws.logs_dir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedsilo", *args],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ws.root,
        )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start-up:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{name} did not listen within 60 s") from None
            time.sleep(0.05)
    return Server(name, f"https://127.0.0.1:{port}", proc, log)


def _stop(server: Server) -> None:
    if server.alive():
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    silos = "".join(
        f"  - name: {s}\n    storage: {{root: storage/{s}}}\n    compute: {{name: {s}-cpu}}\n"
        for s in SILOS
    )
    spec = tmp / "fuzz.yaml"
    spec.write_text(
        f"name: fuzz\norchestrator:\n  host: 127.0.0.1\n  port: {port}\n"
        "  storage: {root: storage/orchestrator}\n  compute: {name: orchestrator-cpu}\n"
        f"silos:\n{silos}submitters: [alice]\nadmins: [carol]\n"
    )
    provision(spec, tmp / "ws")
    ws = open_workspace(tmp / "ws")
    silo = ws.kit("silo-a")
    assert silo.approval_port is not None
    orchestrator = _start(
        ws,
        "orchestrator",
        ["orchestrator", "start", "--kit", str(ws.kit_dir("orchestrator"))],
        port,
    )
    try:
        approval = _start(
            ws,
            "silo-a-approval",
            ["approval", "serve", "--kit", str(ws.kit_dir("silo-a"))],
            silo.approval_port,
        )
    except BaseException:
        _stop(orchestrator)
        raise
    identities = {
        "alice": identity(ws.kit("alice")),
        "carol": identity(ws.kit("carol")),  # the federation's administrator
        "silo-a": identity(silo),
        "silo-b": identity(ws.kit("silo-b")),
        "silo-a admin": identity(silo, admin=True),
    }
    try:
        yield Servers(ws, orchestrator, approval, identities)
    finally:
        _stop(approval)
        _stop(orchestrator)


def assert_healthy(server: Server, caller: Identity) -> None:
    """The server still runs, still answers, and logged no traceback."""
    assert server.alive(), f"{server.name} died:\n{server.log_text()[-4000:]}"
    path = "/v1/whoami" if server.name == "orchestrator" else "/v1/requests/none"
    answer = caller.request("GET", server.url + path, timeout=10)
    assert answer.status_code < 500, answer.text
    text = server.log_text()
    assert "Traceback" not in text, f"{server.name} logged a traceback:\n{text[-6000:]}"
