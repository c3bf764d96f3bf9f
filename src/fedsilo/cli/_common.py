"""Options and lookups shared by the command groups."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsilo.config import Kit, Role, load_kit, open_workspace
from fedsilo.errors import ConfigError

__all__ = ["WorkspaceArgument", "WorkspaceOption", "console", "err_console", "submitter_kit"]

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
    typer.Option("--kit", envvar="FEDSILO_KIT", help="A submitter's kit folder (instead of -w)."),
]


def submitter_kit(workspace: Path, kit: Path | None) -> Kit:
    """The submitter kit given by ``--kit``, else the workspace's first submitter's."""
    if kit is not None:
        loaded = load_kit(kit)
    else:
        ws = open_workspace(workspace)
        loaded = ws.kit(ws.submitter_name)
    if loaded.role is not Role.SUBMITTER:
        raise ConfigError(
            f"the kit of '{loaded.name}' is a {loaded.role} kit; this command needs a "
            "submitter's kit",
            file=str(loaded.kit_dir),
        )
    return loaded


def default_workspace() -> Path:
    return Path(os.environ.get("FEDSILO_WORKSPACE", "."))
