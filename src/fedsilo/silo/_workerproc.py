"""The agent's handle on a job worker process."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from fedsilo.errors import TaskFailed
from fedsilo.silo._protocol import read_message, write_message
from fedsilo.silo._sandbox import SandboxSpec, sandbox_argv

__all__ = ["WorkerProcess"]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class WorkerProcess:
    """Starts ``fedsilo.silo._worker`` and exchanges one message at a time with it.

    The worker gets a clean environment (no credentials of the agent) with the variables of
    the compute it runs on (``environment``), the job's folder as working directory, and
    its output in ``log_file``. With ``sandbox`` it runs under bubblewrap as
    :func:`~fedsilo.silo._sandbox.sandbox_argv` says: the two pipes pass through ``bwrap``
    (it keeps inherited descriptors open), and the sandbox's writable folders are created
    first so they can be bound. ``cwd`` should then be one of them (the work folder), since
    the sandbox starts in its first writable folder.
    """

    def __init__(
        self,
        *,
        silo: str,
        cwd: Path,
        log_file: Path,
        sandbox: SandboxSpec | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.silo = silo
        self.log_file = log_file
        self.sandbox = sandbox
        cwd.mkdir(parents=True, exist_ok=True)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "HOME": str(cwd),
            "LANG": "C.UTF-8",
            **(environment or {}),  # the compute's own variables (checked in its spec)
        }
        command = [
            sys.executable,
            "-m",
            "fedsilo.silo._worker",
            str(to_worker_r),
            str(from_worker_w),
        ]
        if sandbox is not None:
            sandbox = dataclasses.replace(sandbox, environment=tuple((environment or {}).items()))
            for folder in sandbox.writable:
                folder.mkdir(parents=True, exist_ok=True)
            command = sandbox_argv(sandbox, command)
        with log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                pass_fds=(to_worker_r, from_worker_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=cwd,
                env=env,
            )
        os.close(to_worker_r)
        os.close(from_worker_w)
        self._to: IO[bytes] = os.fdopen(to_worker_w, "wb")
        self._from: IO[bytes] = os.fdopen(from_worker_r, "rb")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; a dead or failing worker raises."""
        try:
            write_message(self._to, {"op": op, **fields})
            reply = read_message(self._from)
        except (BrokenPipeError, ValueError, OSError) as exc:
            reply = None
            detail = str(exc)
        else:
            detail = ""
        if reply is None:
            code = self._proc.wait(timeout=5) if not self.alive() else None
            raise TaskFailed(
                self.silo,
                f"the job worker exited (code {code}) {detail}\n{_tail(self.log_file)}".strip(),
            )
        if not reply.get("ok"):
            raise TaskFailed(self.silo, f"{reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within a few seconds."""
        if self.alive():
            with contextlib.suppress(OSError):
                write_message(self._to, {"op": "shutdown"})
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._to, self._from):
            with contextlib.suppress(OSError):
                stream.close()
