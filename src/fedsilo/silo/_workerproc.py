"""The agent's handle on a job worker process tree, and the limits it runs under.

Each job step runs in a worker the agent starts: in a bubblewrap sandbox (unless the silo
says ``sandbox: none``), inside a control group of its own that bounds its memory, its
processes and its CPU time (or under rlimits where control groups cannot be made), with a
deadline for every step and a bound on its work folder. A watchdog thread follows each
step; when a limit is reached it kills the whole tree at once, and the step fails with
:class:`LimitReached` naming the limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from fedsilo.config import format_bytes, format_seconds
from fedsilo.errors import TaskFailed
from fedsilo.silo._limits import Breach, JobGroup
from fedsilo.silo._protocol import (
    Command,
    Failure,
    Reply,
    parse_reply,
    read_message,
    write_message,
)
from fedsilo.silo._sandbox import SandboxSpec, sandbox_argv

__all__ = ["LimitReached", "StepLimits", "WorkerFailed", "WorkerProcess", "folder_size"]

OUTPUT_LINES = 200  # lines of a failed worker's output the silo keeps with its error
WATCH_SECONDS = 0.2  # how often a step's watchdog reads the kernel's counters and the clock
DISK_WATCH_SECONDS = 2.0  # how often it measures the work folder


def _tail(path: Path, lines: int = 15, max_bytes: int = 256 * 1024) -> str:
    """The last ``lines`` lines of ``path``, read from its last ``max_bytes`` bytes only."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - max_bytes, 0))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (their allocated blocks), not following links."""
    total = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


class WorkerFailed(TaskFailed):
    """A job worker answered a command with an error, or ended without answering.

    Every field comes from the worker process, where task code runs and can rewrite what
    the worker says: ``message``, ``traceback`` and ``claimed_class`` (the exception's class
    as the worker names it) are the task's to choose, and ``output`` is the tail of what
    the worker printed. The agent keeps them in the silo (:mod:`fedsilo.silo._errors`);
    none of them leaves it. ``exited`` says the worker ended without an answer.
    """

    def __init__(
        self,
        silo: str,
        *,
        message: str,
        traceback: str = "",
        claimed_class: str | None = None,
        output: str = "",
        exited: bool = False,
    ) -> None:
        self.message = message
        self.traceback = traceback
        self.claimed_class = claimed_class
        self.output = output
        self.exited = exited
        detail = f"{message}\n{output}" if exited else f"{message}\n{traceback}"
        super().__init__(silo, detail.strip())


class LimitReached(TaskFailed):
    """A job step reached a limit of its silo and its whole process tree was killed.

    ``limit`` says which, in words (``memory limit 2 GiB``); the agent says where.
    """

    def __init__(self, silo: str, limit: str) -> None:
        self.limit = limit
        super().__init__(silo, f"{limit} reached")


@dataclass(frozen=True)
class StepLimits:
    """The limits a worker's steps run under, besides its control group's.

    ``max_step_seconds`` bounds each request; ``disk`` bounds ``work_dir``'s size.
    """

    max_step_seconds: float | None = None
    disk: int | None = None
    work_dir: Path | None = None
    memory: int | None = None
    processes: int | None = None


class WorkerProcess:
    """Starts ``fedsilo.silo._worker`` and exchanges one message at a time with it.

    The worker gets a clean environment (no credentials of the agent) with the variables of
    the compute it runs on (``environment``), the job's folder as working directory, and
    its output in ``log_file``. With ``sandbox`` it runs under bubblewrap as
    :func:`~fedsilo.silo._sandbox.sandbox_argv` says: the two pipes pass through ``bwrap``
    (it keeps inherited descriptors open), and the sandbox's writable folders are created
    first so they can be bound. ``cwd`` should then be one of them (the work folder), since
    the sandbox starts in its first writable folder. With ``group`` the process is inside
    that control group before it runs anything; it leads a session of its own, so the tree
    can be killed whole even without one. ``prefix`` runs the command in the step's
    network namespace (a step over several machines).
    """

    def __init__(
        self,
        *,
        silo: str,
        cwd: Path,
        log_file: Path,
        sandbox: SandboxSpec | None = None,
        environment: Mapping[str, str] | None = None,
        group: JobGroup | None = None,
        limits: StepLimits = StepLimits(),
        prefix: Sequence[str] = (),
    ) -> None:
        self.silo = silo
        self.log_file = log_file
        self.sandbox = sandbox
        self.group = group
        self.limits = limits
        self._stopped: str | None = None  # the limit the watchdog stopped the tree for
        self._lock = threading.Lock()
        cwd.mkdir(parents=True, exist_ok=True)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        variables = {**(environment or {}), **(group.environment() if group else {})}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "HOME": str(cwd),
            "LANG": "C.UTF-8",
            **variables,  # the compute's own and the grant's (checked in its spec)
        }
        command = [
            sys.executable,
            "-m",
            "fedsilo.silo._worker",
            str(to_worker_r),
            str(from_worker_w),
        ]
        if sandbox is not None:
            sandbox = dataclasses.replace(sandbox, environment=tuple(variables.items()))
            for folder in sandbox.writable:
                folder.mkdir(parents=True, exist_ok=True)
            command = sandbox_argv(sandbox, command)
        command = [*prefix, *command]  # a network namespace of the step's own, if any
        if group is not None:
            command = [*group.launch_prefix(), *command]
        with log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                pass_fds=(to_worker_r, from_worker_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=cwd,
                env=env,
                start_new_session=True,
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

    def request(self, command: Command) -> Reply:
        """Send one command and wait for its answer; a dead or failing worker raises.

        The step runs under the worker's limits: past its deadline, at its memory or
        process limit or over its disk limit, the whole tree is killed and
        :class:`LimitReached` says which limit it was.
        """
        done = threading.Event()
        watchdog = threading.Thread(
            target=self._watch, args=(done,), name=f"watch-{self.pid}", daemon=True
        )
        watchdog.start()
        try:
            try:
                write_message(self._to, command.model_dump(mode="json"))
                reply = read_message(self._from)
            except (BrokenPipeError, ValueError, OSError) as exc:
                reply = None
                detail = str(exc)
            else:
                detail = ""
        finally:
            done.set()
            watchdog.join()
        breach = self._breach()
        if breach is not None:
            self.kill()
            raise LimitReached(self.silo, breach)
        if reply is None:
            code = self._proc.wait(timeout=5) if not self.alive() else None
            raise WorkerFailed(
                self.silo,
                message=f"the job worker exited (code {code}) {detail}".strip(),
                output=_tail(self.log_file, OUTPUT_LINES),
                exited=True,
            )
        try:
            answer = parse_reply(reply)
        except ValidationError as exc:
            raise WorkerFailed(
                self.silo,
                message=f"the job worker answered '{command.op}' with something that is not a "
                f"reply ({exc.error_count()} fields do not fit)",
                output=_tail(self.log_file, OUTPUT_LINES),
            ) from None
        if isinstance(answer, Failure):
            raise WorkerFailed(
                self.silo,
                message=answer.error,
                traceback=answer.traceback,
                claimed_class=answer.error_class,
                output=_tail(self.log_file, OUTPUT_LINES),
            )
        return answer

    def _breach(self) -> str | None:
        """The limit this worker's tree reached, in words, if it reached one."""
        if self._stopped is not None:
            return self._stopped
        if self.group is None:
            return None
        found = self.group.breach()
        if found is Breach.MEMORY:
            return _memory_limit(self.limits.memory)
        if found is Breach.PROCESSES:
            return _process_limit(self.limits.processes)
        return None

    def _watch(self, done: threading.Event) -> None:
        """Kill the tree when the step passes its deadline, a kernel limit or its disk."""
        limits = self.limits
        started = time.monotonic()
        next_disk = started
        while not done.wait(WATCH_SECONDS):
            now = time.monotonic()
            why: str | None = None
            if limits.max_step_seconds is not None and now - started > limits.max_step_seconds:
                why = f"time limit {format_seconds(limits.max_step_seconds)} a step"
            elif self.group is not None and (found := self.group.breach()) is not None:
                why = (
                    _memory_limit(limits.memory)
                    if found is Breach.MEMORY
                    else _process_limit(limits.processes)
                )
            elif limits.disk is not None and limits.work_dir is not None and now >= next_disk:
                next_disk = now + DISK_WATCH_SECONDS
                if folder_size(limits.work_dir) > limits.disk:
                    why = f"disk limit {format_bytes(limits.disk)} of the work folder"
            if why is not None:
                self._stopped = why
                self.kill()
                return

    def kill(self) -> None:
        """Kill the whole worker tree now: every process of its control group and session."""
        with self._lock:
            if self.group is not None:
                self.group.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)

    def stop(self, *, graceful: bool = True) -> None:
        """End the worker: ask it to exit (``graceful``), and kill its tree in any case."""
        if graceful and self.alive():
            with contextlib.suppress(OSError, ValueError):
                write_message(self._to, {"op": "shutdown"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self.kill()
        for stream in (self._to, self._from):
            with contextlib.suppress(OSError):
                stream.close()


def _memory_limit(memory: int | None) -> str:
    return f"memory limit {format_bytes(memory)}" if memory else "memory limit"


def _process_limit(processes: int | None) -> str:
    return f"process limit {processes}" if processes else "process limit"
