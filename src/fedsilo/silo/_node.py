"""A silo's other machines: the node service each runs, and the agent's side of it.

A compute may span several machines of one silo (``nodes:`` in its spec; the first is the
agent's own). Each other machine runs ``fedsilo node start --kit KIT --node NAME``: a
small TLS server on the machine's address on the silo's network. The agent opens one
connection per job step and machine and says what to start there: the step's ranks of
that machine, under torch's launcher, in a sandbox, a control group with the grant's
limits and a network namespace that reaches the step's other machines only. The step
lives on that machine as long as the connection: when the agent closes it (the step
ended, the job was cancelled) or dies, the node kills the tree and removes its group and
namespace; when the tree ends first, the node says how (and which limit it hit, if one).

Only the silo's own agent may connect: both ends present the silo's certificate from
its kit and each checks the other's is exactly that one. The silo's storage must be the
same shared folder on every machine (the job's code, inputs and work folder are there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsilo.config import Kit, NodeSpec, Role, cert_fingerprint
from fedsilo.errors import ConfigError, FedsiloError
from fedsilo.silo._gpu import check_gpus, gpu_binds
from fedsilo.silo._limits import Breach, JobGroup, Limiter, Limits
from fedsilo.silo._network import INTERFACE, JobNetwork
from fedsilo.silo._ranks import Machines, launcher_argv
from fedsilo.silo._sandbox import SandboxSpec, sandbox_argv

__all__ = ["NodeService", "RemoteStep", "StartRanks", "run_node"]

log = logging.getLogger("fedsilo.node")

_SAFE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$"
_POLL = 0.2
MAX_MESSAGE = 1 << 20


class StartRanks(BaseModel):
    """What the agent asks a node to start: its ranks of one job step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: Annotated[str, Field(pattern=_SAFE)]
    node_rank: Annotated[int, Field(ge=1)]
    nnodes: Annotated[int, Field(ge=2)]
    workers: Annotated[int, Field(ge=1)]
    threads: Annotated[int, Field(ge=1)]
    master: str
    address: str
    peers: tuple[str, ...]
    code_dir: str
    inputs: tuple[str, ...] = ()
    writable: tuple[str, ...]
    environment: dict[str, str] = Field(default_factory=dict)
    memory: int | None = None
    processes: int | None = None
    cpu: float | None = None
    disk: int | None = None
    sandbox: bool = True
    gpus: tuple[int, ...] = ()


def _own_fingerprint(kit: Kit) -> str:
    return cert_fingerprint(ssl.PEM_cert_to_DER_cert(kit.cert_file.read_text()))


def _context(kit: Kit, *, server: bool) -> ssl.SSLContext:
    """TLS 1.3 with the silo's own certificate on both ends.

    The node checks the agent's certificate against the federation CA (a client
    certificate, which it is); the agent pins the node's to the silo's certificate by its
    fingerprint, which is stronger than a CA check and needs no server purpose in it. Each
    end then checks the other's fingerprint is the silo's own.
    """
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    ctx = ssl.create_default_context(purpose, cafile=str(kit.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(certfile=str(kit.cert_file), keyfile=str(kit.key_file))
    ctx.check_hostname = False
    # the agent's end pins the node's certificate instead (RemoteStep: _peer_is before any
    # message): a CA check would refuse it, a client certificate without a server purpose
    ctx.verify_mode = ssl.CERT_REQUIRED if server else ssl.CERT_NONE
    return ctx


def _peer_is(conn: ssl.SSLSocket, fingerprint: str) -> bool:
    der = conn.getpeercert(binary_form=True)
    return der is not None and hashlib.sha256(der).hexdigest() == fingerprint


def _send(conn: ssl.SSLSocket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive(reader: Any) -> dict[str, Any] | None:
    line = reader.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if len(line) > MAX_MESSAGE:
        raise ValueError("message over the size limit")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    return message


class RemoteStep:
    """The agent's connection to one node for one step: the ranks live while it is open."""

    def __init__(self, kit: Kit, node: NodeSpec, request: StartRanks) -> None:
        self.node = node
        self.limit: str | None = None
        self.exit_code: int | None = None
        raw = socket.create_connection((str(node.address), node.port), timeout=30)
        try:
            self._conn = _context(kit, server=False).wrap_socket(raw)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise FedsiloError(
                f"node '{node.name}' ({node.address}:{node.port}) refused the silo's "
                f"certificate: {exc}"
            ) from exc
        if not _peer_is(self._conn, _own_fingerprint(kit)):
            self._conn.close()
            raise FedsiloError(
                f"the service at {node.address}:{node.port} is not node '{node.name}' of this "
                "silo: it does not hold the silo's certificate"
            )
        self._reader = self._conn.makefile("rb")
        _send(self._conn, {"op": "start", **request.model_dump(mode="json")})
        reply = _receive(self._reader)
        if reply is None or reply.get("event") != "started":
            detail = (reply or {}).get("error", "it closed the connection")
            self.close()
            raise FedsiloError(f"node '{node.name}' could not start the step's ranks: {detail}")
        self._conn.settimeout(None)

    def poll(self, wait: float = 0.0) -> bool:
        """Read what the node said about the ranks (within ``wait`` s); True once they ended."""
        if self.exit_code is not None:
            return True
        ready, _, _ = select.select([self._conn], [], [], wait)
        if not ready:
            return False
        with contextlib.suppress(OSError, ValueError):
            event = _receive(self._reader)
            if event is not None and event.get("event") == "exited":
                self.exit_code = int(event.get("code", -1))
                self.limit = event.get("limit")
                return True
        self.exit_code = -1
        return True

    def close(self) -> None:
        """End the step on the node: it kills the ranks and cleans up."""
        for stream in (self._reader, self._conn):
            with contextlib.suppress(OSError):
                stream.close()


class NodeService:
    """``fedsilo node start``: runs the ranks the silo's agent asks this machine for."""

    def __init__(self, kit: Kit, node_name: str) -> None:
        if kit.role is not Role.SILO or kit.silo is None:
            raise ConfigError(f"kit '{kit.name}' is not a silo's kit", file=str(kit.kit_dir))
        found = [(c, n) for c in kit.silo.all_computes() for n in c.nodes if n.name == node_name]
        if not found:
            names = sorted({n.name for c in kit.silo.all_computes() for n in c.nodes})
            raise ConfigError(
                f"silo '{kit.name}' has no node '{node_name}' in its computes "
                f"(its nodes: {', '.join(names) or 'none'})",
                file=str(kit.kit_dir),
            )
        self.kit = kit
        self.compute, self.node = found[0]
        self.storage = kit.storage_path.resolve()
        self.fingerprint = _own_fingerprint(kit)
        self.limiter = Limiter.detect(f"{kit.name}-{node_name}")
        self.stop = threading.Event()

    def serve(self) -> None:
        """Accept the agent's connections until :attr:`stop` is set."""
        ctx = _context(self.kit, server=True)
        family = socket.AF_INET6 if self.node.address.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((str(self.node.address), self.node.port))
            listener.listen(16)
            log.info(
                "node '%s' of silo '%s' listening on %s:%d (limits: %s)",
                self.node.name,
                self.kit.name,
                self.node.address,
                self.node.port,
                self.limiter.enforcement.value,
            )
            while not self.stop.is_set():
                ready, _, _ = select.select([listener], [], [], 0.5)
                if ready:
                    raw, _ = listener.accept()
                    threading.Thread(target=self._session, args=(ctx, raw), daemon=True).start()
        self.limiter.close()

    def _session(self, ctx: ssl.SSLContext, raw: socket.socket) -> None:
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("refused a connection: %s", exc)
            raw.close()
            return
        with conn:
            if not _peer_is(conn, self.fingerprint):
                log.warning("refused a certificate that is not the silo's own")
                return
            reader = conn.makefile("rb")
            try:
                message = _receive(reader)
                if message is None:
                    return
                request = StartRanks.model_validate({k: v for k, v in message.items() if k != "op"})
                self._check(request)
            except (ValueError, ValidationError, ConfigError) as exc:
                _send(conn, {"event": "error", "error": str(exc)[:2000]})
                return
            self._run(conn, request)

    def _check(self, request: StartRanks) -> None:
        """The paths are the silo's storage, the address one this node reserved for jobs."""
        addresses = {str(a) for a in self.node.job_addresses}
        if request.address not in addresses:
            raise ConfigError(f"{request.address} is not a job address of node '{self.node.name}'")
        for path in (request.code_dir, *request.inputs, *request.writable):
            if not Path(path).resolve().is_relative_to(self.storage):
                raise ConfigError(f"{path} is outside the silo's storage {self.storage}")

    def _run(self, conn: ssl.SSLSocket, request: StartRanks) -> None:
        """Start the ranks, then wait for them to end or for the agent to hang up."""
        network = JobNetwork.for_step(
            f"{request.step}@{self.node.name}",
            parent=self.node.interface,
            address=request.address,
            peers=request.peers,
        )
        group: JobGroup | None = None
        proc: subprocess.Popen[bytes] | None = None
        try:
            network.create()
            group = self.limiter.group(
                f"{request.step}.node{request.node_rank}",
                Limits(
                    memory_bytes=request.memory,
                    processes=request.processes,
                    cpu_cores=request.cpu,
                    file_bytes=request.disk,
                ),
            )
            proc = self._start(request, network, group)
            _send(conn, {"event": "started", "pid": proc.pid})
            self._follow(conn, proc, group)
        except (FedsiloError, OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                _send(conn, {"event": "error", "error": str(exc)[:2000]})
        finally:
            if group is not None:
                group.close()
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            network.close()

    def _start(
        self, request: StartRanks, network: JobNetwork, group: JobGroup
    ) -> subprocess.Popen[bytes]:
        variables = {
            **request.environment,
            **group.environment(),
            "OMP_NUM_THREADS": str(request.threads),
            "MKL_NUM_THREADS": str(request.threads),
            "GLOO_SOCKET_IFNAME": INTERFACE,
            "NCCL_SOCKET_IFNAME": INTERFACE,
            "TORCH_CPP_LOG_LEVEL": "ERROR",
        }
        machines = Machines(
            count=request.nnodes,
            rank=request.node_rank,
            master=request.master,
            address=request.address,
        )
        command = launcher_argv(workers=request.workers, socket_path="-", machines=machines)
        work = Path(request.writable[0])
        binds = None
        if request.gpus:
            check_gpus(self.kit.name, self.compute.name, request.gpus)
            variables["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, request.gpus))
            binds = gpu_binds(request.gpus)
        if request.sandbox:
            spec = SandboxSpec(
                code_dir=Path(request.code_dir),
                inputs=tuple(Path(p) for p in request.inputs),
                writable=tuple(Path(p) for p in request.writable),
                environment=tuple(variables.items()),
                share_net=True,
                devices=binds.devices if binds else (),
                system=binds.read_only if binds else (),
                library_path=binds.library_dirs if binds else (),
            )
            command = sandbox_argv(spec, command)
        command = [*group.launch_prefix(), *network.prefix(), *command]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            **variables,
        }
        log_file = work.parent / f"node-{self.node.name}.log"
        with log_file.open("ab") as out:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=work,
                env=env,
                start_new_session=True,
            )

    def _follow(self, conn: ssl.SSLSocket, proc: subprocess.Popen[bytes], group: JobGroup) -> None:
        """Until the ranks end (say how) or the agent hangs up (kill them)."""
        limit: str | None = None
        while True:
            found = group.breach()
            if found is not None and limit is None:
                limit = (
                    f"memory limit reached on node '{self.node.name}'"
                    if found is Breach.MEMORY
                    else f"process limit reached on node '{self.node.name}'"
                )
                group.kill()
            code = proc.poll()
            if code is not None:
                with contextlib.suppress(OSError):
                    _send(conn, {"event": "exited", "code": code, "limit": limit})
                return
            ready, _, _ = select.select([conn], [], [], _POLL)
            if not ready:
                continue
            try:
                data = conn.recv(1)
            except ssl.SSLWantReadError:
                continue  # a TLS record that carried no data
            except (OSError, ssl.SSLError):
                return
            if not data:
                return  # the agent hung up: the finally of _run kills the ranks


def run_node(kit_dir: Path, node: str) -> None:
    """Serve as node ``node`` of the silo whose kit is ``kit_dir`` until SIGTERM or SIGINT."""
    import signal

    from fedsilo.config import load_kit

    service = NodeService(load_kit(kit_dir), node)

    def on_signal(_signum: int, _frame: object) -> None:
        service.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.serve()
