"""Options and lookups shared by the command groups."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsilo.config import Kit, Role, load_kit, open_workspace
from fedsilo.errors import ConfigError

__all__ = [
    "SiloKitOption",
    "SiloOption",
    "WorkspaceArgument",
    "WorkspaceOption",
    "caller_kit",
    "console",
    "err_console",
    "silo_kit",
    "submitter_kit",
]

console = Console()
err_console = Console(stderr=True)

WorkspaceOption = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        envvar="FEDSILO_WORKSPACE",
        help="The provisioned workspace (default: $FEDSILO_WORKSPACE or '.').",
    ),
]
WorkspaceArgument = Annotated[
    Path,
    typer.Argument(
        envvar="FEDSILO_WORKSPACE",
        help="The provisioned workspace (default: $FEDSILO_WORKSPACE or '.').",
        show_default=False,
    ),
]
KitOption = Annotated[
    Path | None,
    typer.Option(
        "--kit",
        envvar="FEDSILO_KIT",
        help="The kit folder to call the orchestrator with (instead of -w).",
    ),
]


SiloOption = Annotated[
    str | None,
    typer.Option("--silo", help="The silo (may be left out with --kit)."),
]
SiloKitOption = Annotated[
    Path | None,
    typer.Option("--kit", help="The silo's kit folder, for a silo on its own machine."),
]


def silo_kit(silo: str | None, workspace: Path, kit: Path | None) -> Kit:
    """The silo kit given by ``--kit`` (checked against ``--silo``), else the workspace's."""
    if kit is not None:
        loaded = load_kit(kit)
        if silo is not None and silo != loaded.name:
            raise ConfigError(f"the kit in {kit} belongs to '{loaded.name}', not to silo '{silo}'")
    elif silo is None:
        raise typer.BadParameter("give --silo NAME (or --kit KIT_DIR)", param_hint="--silo")
    else:
        loaded = open_workspace(workspace).kit(silo)
    if loaded.role is not Role.SILO:
        raise ConfigError(
            f"'{loaded.name}' is a {loaded.role}, not a silo; this command needs a silo's kit",
            file=str(loaded.kit_dir),
        )
    return loaded


def submitter_kit(workspace: Path, kit: Path | None) -> Kit:
    """The submitter kit given by ``--kit``, else the workspace's first submitter's."""
    return caller_kit(workspace, kit, Role.SUBMITTER)


def caller_kit(workspace: Path, kit: Path | None, *roles: Role) -> Kit:
    """The kit given by ``--kit`` (of one of ``roles``), else the workspace's first
    submitter's: whom the orchestrator sees calling. It checks what each may do; this
    only turns away a kit that could never do it, before anything is sent."""
    if kit is not None:
        loaded = load_kit(kit)
    else:
        ws = open_workspace(workspace)
        loaded = ws.kit(ws.submitter_name)
    if loaded.role not in roles:
        wanted = " or ".join(f"{'an' if r.value[0] in 'aeiou' else 'a'} {r.value}'s" for r in roles)
        raise ConfigError(
            f"the kit of '{loaded.name}' is {'an' if loaded.role.value[0] in 'aeiou' else 'a'} "
            f"{loaded.role} kit; this command needs {wanted} kit",
            file=str(loaded.kit_dir),
        )
    return loaded


def default_workspace() -> Path:
    return Path(os.environ.get("FEDSILO_WORKSPACE", "."))
