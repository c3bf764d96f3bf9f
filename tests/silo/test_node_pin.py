"""The agent's end of a node connection talks only to a server holding the silo's own
certificate: another certificate of the same federation CA is refused before anything is
sent."""

from __future__ import annotations

import socket
import ssl
import threading
from ipaddress import ip_address
from pathlib import Path

import pytest

from fedsilo.config import NodeSpec, load_kit
from fedsilo.errors import FedsiloError
from fedsilo.provisioning import provision
from fedsilo.silo._node import RemoteStep, StartRanks

SPEC = """name: pin
orchestrator: {host: 127.0.0.1, port: 7443, storage: {root: s/o}, compute: {name: o}}
silos:
  - {name: silo-a, storage: {root: s/a}, compute: {name: a}}
  - {name: silo-b, storage: {root: s/b}, compute: {name: b}}
submitters: [alice]
"""


def test_a_node_without_the_silos_certificate_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    (tmp_path / "pin.yaml").write_text(SPEC)
    ws = provision(tmp_path / "pin.yaml", tmp_path / "ws")
    impostor = load_kit(ws.kit_dir("silo-b"))  # signed by the same CA, not silo-a's
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(impostor.cert_file), str(impostor.key_file))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                received.append(tls.recv(4096))
        except (OSError, ssl.SSLError):
            received.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    node = NodeSpec(
        name="node-1",
        address=ip_address("127.0.0.1"),
        port=port,
        interface="eth0",
        job_addresses=(ip_address("127.0.0.2"),),
    )
    request = StartRanks(
        step="s1",
        node_rank=1,
        nnodes=2,
        workers=1,
        threads=1,
        master="127.0.0.1:1",
        address="127.0.0.2",
        peers=(),
        code_dir=str(tmp_path),
        writable=(),
    )
    with pytest.raises(FedsiloError, match="is not node 'node-1' of this silo"):
        RemoteStep(load_kit(ws.kit_dir("silo-a")), node, request)
    thread.join(10)
    listener.close()
    assert received == [b""]  # the connection closed with nothing sent
