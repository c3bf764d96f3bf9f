"""``fedsilo service``: systemd units for a participant's processes (docs/deploy.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsilo.cli._common import console

service_app = typer.Typer(
    name="service",
    help="Write systemd units that run a participant's processes across reboots.",
    no_args_is_help=True,
)


def units(
    kit: Annotated[Path, typer.Option("--kit", help="The orchestrator's or a silo's kit folder.")],
    to: Annotated[
        Path,
        typer.Option("--to", help="Folder to write the units into (e.g. /etc/systemd/system)."),
    ],
    user: Annotated[
        str | None,
        typer.Option("--user", help="User the processes run as (default: the kit's owner)."),
    ] = None,
    python: Annotated[
        Path | None,
        typer.Option("--python", help="The Python with fedsilo installed (default: this one)."),
    ] = None,
    env_dir: Annotated[
        Path,
        typer.Option("--env-dir", help="Where each unit's optional NAME.env file is read from."),
    ] = Path("/etc/fedsilo"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace unit files of the same name.")
    ] = False,
) -> None:
    """Write the systemd units of KIT's participant: the orchestrator, or a silo's agent,
    approval endpoint and nodes."""
    from fedsilo.runtime._units import write_units

    written = write_units(kit, to, python=python, user=user, env_dir=env_dir, force=force)
    for path, unit in written:
        console.print(f"wrote {path} (for {unit.machine})", highlight=False, soft_wrap=True)
    names = " ".join(unit.name for _, unit in written)
    console.print("on each machine, with its units in /etc/systemd/system:", highlight=False)
    console.print(
        f"  systemctl daemon-reload && systemctl enable --now {names}",
        highlight=False,
        soft_wrap=True,
    )


service_app.command("units")(units)


def register(app: typer.Typer) -> None:
    """Add the ``service`` group to the root app."""
    app.add_typer(service_app)
