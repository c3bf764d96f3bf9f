"""The commands the CLI tells a person to run, built in one place.

Each is a whole command line that works when pasted as printed, from any folder: paths
are absolute, every argument is shell-quoted, and the workspace or kit the command
needs is named (``-w WORKSPACE`` or ``--kit KIT``, as the command that printed it was
given). ``tests/cli/test_hints.py`` runs each one.
"""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = [
    "command",
    "job_show",
    "kit_argv",
    "silo_argv",
    "silo_errors",
    "tracking_runs",
    "tracking_ui",
    "up",
]


def command(*argv: str | Path) -> str:
    """``fedsilo ARGV...`` as a shell line: paths made absolute, everything quoted."""
    words = [str(a.absolute()) if isinstance(a, Path) else a for a in argv]
    return shlex.join(["fedsilo", *words])


def kit_argv(workspace: Path, kit: Path | None) -> tuple[str | Path, ...]:
    """The options that name the same caller's kit again: ``--kit KIT`` or ``-w WORKSPACE``."""
    return ("--kit", kit) if kit is not None else ("-w", workspace)


def silo_argv(silo: str, workspace: Path, kit: Path | None) -> tuple[str | Path, ...]:
    """The options that name the same silo again: ``--kit KIT``, or ``-w WORKSPACE --silo``."""
    return ("--kit", kit) if kit is not None else ("-w", workspace, "--silo", silo)


def job_show(job_id: str, workspace: Path, kit: Path | None) -> str:
    """Follow a submitted job to its end."""
    return command("job", "show", job_id, "--wait", *kit_argv(workspace, kit))


def up(workspace: Path) -> str:
    """Start what is missing of the local federation in ``workspace``."""
    return command("up", workspace)


def silo_errors(error_id: str, silo: str, workspace: Path, kit: Path | None) -> str:
    """Print one error a silo keeps, whole."""
    return command("silo", "errors", error_id, *silo_argv(silo, workspace, kit))


def tracking_ui(workspace: Path | None = None, *, store: Path | None = None) -> str:
    """Serve the MLflow UI over a workspace's tracking store, or over ``store``."""
    if store is not None:
        return command("tracking", "ui", "--store", store)
    assert workspace is not None
    return command("tracking", "ui", workspace)


def tracking_runs(workspace: Path) -> str:
    """List the jobs tracked in a workspace's store."""
    return command("tracking", "runs", workspace)
