"""The bubblewrap sandbox that confines job code in a silo.

A job worker runs the task's code, which nobody in the silo wrote. Under the sandbox that
code sees the system (``/usr``), the Python install, the venv and fedsilo's own source, the
job's bundle and the silo's approved inputs, all read-only; the job's work and params
folders are its only writable places, besides a private temporary folder (``TMPDIR``,
normally ``/tmp``) that vanishes with it. It gets its own network namespace holding only
``lo`` (no network at all, not even the host's loopback servers), a clean environment,
uid 65534 with every capability dropped, and it is killed when the agent that started it
dies. Nothing else of the host file system exists inside: not
``/etc``, ``/home``, ``/root``, the agent's kit, nor another silo's storage.

:func:`sandbox_argv` only builds the command line (pure, unit-testable);
:func:`check_sandbox` starts one sandbox to prove it works here, once per process.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedsilo.errors import SandboxUnavailable

__all__ = ["SandboxMode", "SandboxSpec", "bwrap_path", "check_sandbox", "sandbox_argv"]

#: The uid and gid job code runs as inside the sandbox (``nobody``).
SANDBOX_ID = 65534

#: ``PATH`` inside the sandbox: the venv's scripts, then the system's.
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Debian's merged-usr layout: these top-level names are symlinks into ``/usr``.
_USR_LINKS = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")


class SandboxMode(StrEnum):
    """How a silo confines job code: ``bubblewrap``, or ``none`` for development only."""

    BUBBLEWRAP = "bubblewrap"
    NONE = "none"


@dataclass(frozen=True)
class SandboxSpec:
    """What one job's sandbox exposes beyond the system and the Python environment.

    ``code_dir`` is the unpacked bundle (read-only); ``inputs`` are the approved datasets
    of this silo, files or folders (read-only); ``writable`` are the job's folders the code
    may write (its work folder, then its params folder). The first writable folder is the
    working directory and ``HOME`` inside. ``environment`` adds variables of the compute the
    job runs on (the ones a compute spec may set) to the clean environment inside.
    ``devices`` are device nodes bound in (a GPU compute's), ``system`` further host paths
    bound read-only (the GPU driver's files), ``library_path`` the folders of libraries
    the dynamic linker must search there. ``share_net`` keeps the network namespace the
    sandbox starts in (a step's own, reaching its other machines only) instead of a new
    one with only ``lo``.
    """

    code_dir: Path
    inputs: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    devices: tuple[str, ...] = ()
    system: tuple[str, ...] = ()
    library_path: tuple[str, ...] = ()
    share_net: bool = False


def bwrap_path() -> str | None:
    """The ``bwrap`` executable on ``PATH``, or None when bubblewrap is not installed."""
    return shutil.which("bwrap")


@functools.cache
def _has_option(bwrap: str, option: str) -> bool:
    """Whether this bubblewrap knows ``option`` (older releases lack the newer hardening)."""
    try:
        done = subprocess.run(
            [bwrap, "--help"], capture_output=True, timeout=10, check=False, text=True
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in done.stdout


def _environment_dirs() -> list[Path]:
    """Folders the worker's Python needs: the install, the venv, fedsilo if editable."""
    import fedsilo

    dirs = [Path(sys.base_prefix), Path(sys.prefix)]
    real_exe = Path(os.path.realpath(sys.executable))
    if not any(real_exe.is_relative_to(d) for d in dirs):
        dirs.append(real_exe.parent.parent)
    source = Path(fedsilo.__file__).resolve().parent.parent
    if not any(source.is_relative_to(Path(d).resolve()) for d in dirs):
        dirs.append(source)  # an editable install: its .pth points at the source tree
    return dirs


def _binds(spec: SandboxSpec) -> list[tuple[str, str, str]]:
    """The ``(flag, source, target)`` binds, parents before children, none redundant.

    A folder both read-only and writable (the agent's ``check`` folder) is bound writable;
    a read-only folder inside a writable one (or the reverse) is bound after its parent so
    the inner mode wins. A bind already covered by an ancestor of the same mode is dropped.
    """
    wanted: dict[str, bool] = {"/usr": False}
    paths: list[str | Path] = [*_environment_dirs(), *spec.system, spec.code_dir, *spec.inputs]
    for path in paths:
        wanted.setdefault(os.path.abspath(path), False)
    for path in spec.writable:
        wanted[os.path.abspath(path)] = True
    chosen: list[tuple[str, bool]] = []
    for target in sorted(wanted, key=lambda p: (p.count("/"), p)):
        writable = wanted[target]
        covering = [(t, w) for t, w in chosen if Path(target).is_relative_to(t)]
        if covering and max(covering, key=lambda c: len(c[0]))[1] == writable:
            continue
        chosen.append((target, writable))
    return [
        ("--bind" if w else "--ro-bind", os.path.realpath(target), target) for target, w in chosen
    ]


def sandbox_argv(spec: SandboxSpec, command: list[str]) -> list[str]:
    """The full ``bwrap`` command line that runs ``command`` confined as ``spec`` says.

    Paths are bound at the same place inside, so the paths the agent hands the worker
    (inputs, work and params folders) mean the same there. Run Python as
    ``python -m ...``: console-script shebangs name host paths.
    """
    bwrap = bwrap_path() or "bwrap"
    argv = [bwrap]
    for name in _USR_LINKS:
        top = f"/{name}"
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):  # a system without merged /usr
            argv += ["--ro-bind", top, top]
    binds = _binds(spec)
    # bwrap creates the folders leading to each bind (the silo's storage/jobs...) in a
    # tmpfs the job could write to: make that skeleton read-only once the binds are in.
    # When the storage itself lies under /tmp (tests), the private /tmp is that skeleton,
    # so the job's temporary files go to a private /var/tmp instead.
    skeleton_in_tmp = any(Path(target).is_relative_to("/tmp") for _, _, target in binds)
    tmpdir = "/var/tmp" if skeleton_in_tmp else "/tmp"
    home = os.path.abspath(spec.writable[0]) if spec.writable else tmpdir
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if skeleton_in_tmp:
        argv += ["--tmpfs", tmpdir]
    for flag, source, target in binds:
        argv += [flag, source, target]
    for node in spec.devices:
        argv += ["--dev-bind", node, node]
    if skeleton_in_tmp:
        argv += ["--remount-ro", "/tmp"]
    argv += ["--remount-ro", "/"]
    argv += ["--unshare-all", *(["--share-net"] if spec.share_net else [])]
    argv += [
        "--unshare-user",
        "--uid",
        str(SANDBOX_ID),
        "--gid",
        str(SANDBOX_ID),
        "--cap-drop",
        "ALL",
        "--hostname",
        "fedsilo-job",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    if _has_option(bwrap, "--disable-userns"):  # bubblewrap >= 0.8: no nested namespaces
        argv.append("--disable-userns")
    env = {
        "PATH": f"{Path(sys.prefix) / 'bin'}:{_SYSTEM_PATH}",
        "HOME": home,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
        "TMPDIR": tmpdir,
        **dict(spec.environment),
    }
    if spec.library_path:
        env["LD_LIBRARY_PATH"] = ":".join(spec.library_path)
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", home, "--", *command]
    return argv


@functools.cache
def _probe() -> str | None:
    """Start one sandbox running this Python; the reason it failed, or None if it worked."""
    bwrap = bwrap_path()
    if bwrap is None:
        return (
            "bubblewrap is not installed (no 'bwrap' on PATH): install it "
            "(apt-get install bubblewrap) or, for development only, set the silo's "
            "'sandbox: none'"
        )
    with tempfile.TemporaryDirectory(prefix="fedsilo-sandbox-check-") as tmp:
        spec = SandboxSpec(code_dir=Path(tmp), writable=(Path(tmp),))
        argv = sandbox_argv(spec, [sys.executable, "-c", "import fedsilo"])
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                env={"PATH": os.environ.get("PATH", _SYSTEM_PATH), "LANG": "C.UTF-8"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap ({bwrap}) could not start a sandbox: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-2000:]
        return (
            f"bubblewrap ({bwrap}) could not start a sandbox (exit {done.returncode}): "
            f"{detail or 'no message'}; user namespaces may be disabled on this host"
        )
    return None


def check_sandbox() -> None:
    """Raise :class:`SandboxUnavailable` unless job code can run sandboxed here.

    Checked once per process (a sandbox start costs a few tens of milliseconds, and the
    answer does not change while the agent runs).
    """
    reason = _probe()
    if reason is not None:
        raise SandboxUnavailable(reason)
