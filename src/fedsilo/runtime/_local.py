"""The embedded deployment: orchestrator, and per silo an agent and an approval endpoint.

``up`` starts each participant as its own OS process with only its own kit, logging to
``WORKSPACE/logs/<name>.log``; the process table lives in ``WORKSPACE/run/processes.json``
so that ``down`` and ``status`` work from any shell.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from fedsilo.api import OrchestratorClient, StatusReport
from fedsilo.config import Workspace, local_cores, open_workspace
from fedsilo.errors import FedsiloError, WorkspaceError

__all__ = ["ProcessInfo", "down", "processes", "up"]

STATE_FILE = "processes.json"

# Processes started by this Python process, kept so they can be reaped (no zombies, no
# "still running" warnings) when ``down`` runs in the same process as ``up``.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessInfo:
    """One process of a local federation."""

    name: str
    role: str
    pid: int
    log: str
    alive: bool = True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    # a pid reused by an unrelated program is not ours; an empty command line is a process
    # still in exec (just started), which cannot be told apart yet
    return not cmdline or b"fedsilo" in cmdline


def processes(workspace: Path) -> list[ProcessInfo]:
    """The processes ``up`` started in this workspace, each marked alive or not."""
    ws = open_workspace(workspace)
    state = ws.run_dir / STATE_FILE
    if not state.exists():
        return []
    entries = json.loads(state.read_text())
    return [ProcessInfo(**{**e, "alive": _alive(int(e["pid"]))}) for e in entries]


@contextmanager
def _locked(ws: Workspace) -> Iterator[None]:
    ws.run_dir.mkdir(parents=True, exist_ok=True)
    with (ws.run_dir / "lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceError(
                f"another fedsilo command is starting or stopping {ws.root}; try again"
            ) from None
        yield


def _spawn(ws: Workspace, name: str, role: str, args: list[str]) -> ProcessInfo:
    ws.logs_dir.mkdir(parents=True, exist_ok=True)
    log = ws.logs_dir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_KIT")}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedsilo", *args],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=ws.root,
        )
    _children[proc.pid] = proc
    return ProcessInfo(name=name, role=role, pid=proc.pid, log=str(log))


def _tail(path: str, lines: int = 12) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _planned(ws: Workspace) -> list[tuple[str, str, list[str]]]:
    """Every process of the local federation: ``(name, role, fedsilo arguments)``."""
    # silos on one machine share its cores: each compute that declares no threads
    # owns its silo's share, so that training in one silo does not starve the others
    cores = str(local_cores(len(ws.silo_names)))
    planned = [
        (
            "orchestrator",
            "orchestrator",
            ["orchestrator", "start", "--kit", str(ws.kit_dir("orchestrator"))],
        )
    ]
    for silo in ws.silo_names:
        kit = str(ws.kit_dir(silo))
        planned.append((f"{silo}-approval", "approval", ["approval", "serve", "--kit", kit]))
        planned.append((silo, "silo", ["silo", "start", "--kit", kit, "--cores", cores]))
    return planned


def up(workspace: Path, *, timeout: float = 60.0) -> StatusReport:
    """Start the orchestrator and every silo's agent; return once all silos are online.

    In a federation that lost some of its processes (one killed, one crashed), only the
    missing ones are started; the others keep running. A federation already whole is a
    :class:`WorkspaceError`.
    """
    ws = open_workspace(workspace)
    with _locked(ws):
        alive = {p.name: p for p in processes(workspace) if p.alive}
        planned = _planned(ws)
        missing = [entry for entry in planned if entry[0] not in alive]
        if not missing:
            raise WorkspaceError(
                f"the federation in {ws.root} is already running "
                f"({', '.join(f'{p.name} pid {p.pid}' for p in alive.values())}); "
                f"stop it first with: fedsilo down {ws.root}"
            )
        started = [_spawn(ws, name, role, args) for name, role, args in missing]
        order = [name for name, _, _ in planned]
        kept = sorted([*alive.values(), *started], key=lambda p: order.index(p.name))
        state = ws.run_dir / STATE_FILE
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(p) for p in kept], indent=2))
        os.replace(tmp, state)
    try:
        return _wait_ready(ws, started, timeout)
    except BaseException:
        if not alive:  # a federation this call started whole: stop it whole
            down(workspace)
        else:
            for p in started:
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        raise


def _wait_ready(ws: Workspace, started: list[ProcessInfo], timeout: float) -> StatusReport:
    deadline = time.monotonic() + timeout
    kit = ws.kit(ws.submitter_name)
    last_error = "not started"
    with OrchestratorClient(kit, timeout=5) as client:
        while time.monotonic() < deadline:
            dead = [p for p in started if not _alive(p.pid)]
            if dead:
                p = dead[0]
                raise WorkspaceError(
                    f"{p.name} exited during start-up; the end of {p.log}:\n{_tail(p.log)}"
                )
            try:
                report = client.status()
            except FedsiloError as exc:
                last_error = str(exc)
            else:
                offline = [s.name for s in report.silos if not s.online]
                closed = [s for s in ws.silo_names if not _listening(ws, s)]
                if not offline and not closed:
                    return report
                last_error = (
                    f"silos not yet online: {', '.join(offline)}"
                    if offline
                    else f"approval endpoints not yet listening: {', '.join(closed)}"
                )
            time.sleep(0.2)
    raise WorkspaceError(
        f"the federation did not come up within {timeout:g} s ({last_error}); "
        f"see the logs in {ws.logs_dir}"
    )


def _listening(ws: Workspace, silo: str) -> bool:
    host, port = ws.federation.approval_address(silo)
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def down(
    workspace: Path, *, timeout: float = 10.0, orchestrator_timeout: float = 75.0
) -> list[ProcessInfo]:
    """Stop every process ``up`` started (SIGTERM, then SIGKILL); return what was stopped.

    The orchestrator gets ``orchestrator_timeout`` seconds before SIGKILL, the others
    ``timeout``: as it stops it logs to MLflow what its tracking still holds (a job that
    just ended), which usually takes well under a second.
    """
    ws = open_workspace(workspace)
    procs = [p for p in processes(workspace) if p.alive]
    order = {"silo": 0, "approval": 1, "orchestrator": 2}
    silos_first = sorted(procs, key=lambda p: order.get(p.role, 0))
    for p in silos_first:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    started = time.monotonic()
    deadlines = {
        p.pid: started + (orchestrator_timeout if p.role == "orchestrator" else timeout)
        for p in procs
    }
    while any(_alive(p.pid) and time.monotonic() < deadlines[p.pid] for p in procs):
        _reap()
        time.sleep(0.05)
    for p in procs:
        if _alive(p.pid):
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    _reap()
    (ws.run_dir / STATE_FILE).unlink(missing_ok=True)
    return procs


def _reap() -> None:
    """Collect children of this process that have exited."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]
