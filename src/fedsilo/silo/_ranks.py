"""Several ranks for one job step: started by torch's launcher, fed by the job worker.

When a silo grants a step ``workers: N``, the job worker the agent started becomes the
ranks' relay: it starts ``torch.distributed.run`` (torchrun) with N processes on this
machine, inside the same sandbox and control group, listens on a Unix socket in its
private temporary folder for rank 0, and hands rank 0 each command of the agent. Rank 0
broadcasts it to the other ranks over the process group (:mod:`fedsilo.silo._rank`) and
answers for them all.

A rank that fails writes its error where the relay finds it and exits; torch's launcher
then stops the other ranks, the relay answers the agent with the failing rank's error and
exits too. No rank outlives the step's worker: they share its control group, which the
agent kills whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fedsilo.silo._network import INTERFACE, RENDEZVOUS_PORT
from fedsilo.silo._protocol import read_message, write_message

__all__ = ["ERRORS_VARIABLE", "Machines", "launcher_argv", "serve_ranks"]

ERRORS_VARIABLE = "FEDSILO_RANK_ERRORS"
"""The folder where a failing rank writes its error (``rank-N.json``) for the relay."""

_POLL = 0.2


@dataclass(frozen=True)
class Machines:
    """A step over several machines, as one machine's launcher sees it."""

    count: int
    rank: int
    master: str  # the first machine's job address: the rendezvous
    address: str  # this machine's job address


def launcher_argv(*, workers: int, socket_path: str, machines: Machines | None = None) -> list[str]:
    """torch's launcher (``torch.distributed.run``) for this machine's ranks of a step.

    On one machine the rendezvous is on a free port of the sandbox's loopback, named by
    address (the sandbox has no ``/etc/hosts``, so neither ``localhost`` nor its host name
    resolves there). Across machines it is static: the first machine (the agent's) holds
    the store on its job address, so global rank 0, which answers the agent, is there.
    """
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={workers}"]
    if machines is None:
        argv += [
            "--nnodes=1",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=127.0.0.1:0",
            f"--rdzv-id={uuid.uuid4().hex}",
            "--local-addr=127.0.0.1",
        ]
    else:
        argv += [
            f"--nnodes={machines.count}",
            f"--node-rank={machines.rank}",
            "--rdzv-backend=static",
            f"--master-addr={machines.master}",
            f"--master-port={RENDEZVOUS_PORT}",
            f"--local-addr={machines.address}",
        ]
    return [
        *argv,
        "--max-restarts=0",
        "--monitor-interval=0.2",
        "-m",
        "fedsilo.silo._rank",
        socket_path,
    ]


class _Ranks:
    """torch's launcher running the ranks, and the connection to rank 0."""

    def __init__(self, workers: int, machines: Machines | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="fedsilo-ranks-"))
        path = self.folder / "rank0.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        argv = launcher_argv(workers=workers, socket_path=str(path), machines=machines)
        env = {
            # c10d's warnings about names it cannot resolve in the sandbox are noise
            "TORCH_CPP_LOG_LEVEL": "ERROR",
            **os.environ,
            ERRORS_VARIABLE: str(self.folder),
            # the ranks talk over loopback on one machine, over the step's own interface
            # across machines
            "GLOO_SOCKET_IFNAME": "lo" if machines is None else INTERFACE,
            "NCCL_SOCKET_IFNAME": "lo" if machines is None else INTERFACE,
        }
        self.launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
        self._conn: socket.socket | None = None
        self._reader: IO[bytes] | None = None
        self._writer: IO[bytes] | None = None

    def _connect(self) -> bool:
        """Wait for rank 0 to connect; False if the launcher exited first."""
        while self._conn is None:
            ready, _, _ = select.select([self._listener], [], [], _POLL)
            if ready:
                self._conn, _ = self._listener.accept()
                self._reader = self._conn.makefile("rb")
                self._writer = self._conn.makefile("wb")
            elif self.launcher.poll() is not None:
                return False
        return True

    def request(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Rank 0's answer to ``msg``; ``None`` when the ranks stopped before answering."""
        if not self._connect():
            return None
        assert self._conn is not None and self._reader is not None and self._writer is not None
        try:
            write_message(self._writer, msg)
            while True:
                ready, _, _ = select.select([self._conn], [], [], _POLL)
                if ready:
                    return read_message(self._reader)
                if self.launcher.poll() is not None:
                    return None
        except (OSError, ValueError):
            return None

    def failure(self) -> dict[str, Any]:
        """Why the ranks stopped: the first failing rank's error, else the launcher's code."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.launcher.wait(timeout=30)
        for file in sorted(self.folder.glob("rank-*.json")):
            with contextlib.suppress(OSError, ValueError):
                error = json.loads(file.read_text())
                rank = file.stem.removeprefix("rank-")
                return {
                    "ok": False,
                    "error": f"rank {rank} failed: {error['error']}",
                    "error_class": error.get("error_class"),
                    "traceback": error.get("traceback", ""),
                }
        code = self.launcher.poll()
        return {
            "ok": False,
            "error": f"the ranks stopped without an answer (torch's launcher exited {code})",
        }

    def close(self) -> None:
        """Tell the ranks to finish, wait for the launcher a little, then kill it."""
        if self._writer is not None:
            with contextlib.suppress(OSError, ValueError):
                write_message(self._writer, {"op": "shutdown"})
        try:
            self.launcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait()
        for stream in (self._reader, self._writer, self._conn, self._listener):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def serve_ranks(init: dict[str, Any], inp: IO[bytes], out: IO[bytes]) -> int:
    """Start ``init["workers"]`` ranks, then relay the agent's commands until it is done.

    Returns the worker's exit code: 0 when the agent closed or said ``shutdown``, 1 when
    the ranks failed (the agent got their error first).
    """
    spread = init.get("machines")
    machines = Machines(**spread) if isinstance(spread, dict) else None
    ranks = _Ranks(int(init["workers"]), machines)
    try:
        msg: dict[str, Any] | None = init
        while msg is not None and msg.get("op") != "shutdown":
            reply = ranks.request(msg)
            if reply is None:
                write_message(out, ranks.failure())
                return 1
            write_message(out, reply)
            msg = read_message(inp)
        return 0
    finally:
        ranks.close()
