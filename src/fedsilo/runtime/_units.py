"""systemd service units for the processes of one participant, so they survive reboots.

``fedsilo service units --kit KIT --to DIR`` writes, for the kit's role:

* the orchestrator: ``fedsilo-orchestrator-FEDERATION.service``;
* a silo: its agent (``fedsilo-SILO-agent.service``), its approval endpoint
  (``fedsilo-SILO-approval.service``) and, for a compute that spans several machines, one
  node unit per machine (``fedsilo-SILO-node-NODE.service``), each for the machine it names.

Submitters and administrators run no service. Each unit starts the process in the
foreground with the Python of the install that wrote it, restarts it when it fails (a
restarted agent is handed its job back, a restarted orchestrator resumes its jobs), and
reads secrets such as a database URL from an optional environment file, never from the
unit itself.

The agent's unit delegates its control group (``Delegate=yes``): the agent creates one
control group per job step under its own, to hold the job to the silo's limits. It runs
bubblewrap, which needs to create namespaces, so the agent's unit sets no namespace or
privilege restrictions; the orchestrator and the approval endpoint, which run no job
code, get a read-only system and may write only their storage.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from fedsilo.config import Kit, Role, load_kit
from fedsilo.errors import ConfigError

__all__ = ["Unit", "service_units", "write_units"]

DEFAULT_ENV_DIR = Path("/etc/fedsilo")
_TEMP_DIRS = (Path("/tmp"), Path("/var/tmp"))


@dataclass(frozen=True)
class Unit:
    """One unit file: its name, its text, and the machine it belongs on."""

    name: str
    text: str
    machine: str


def _quote(argv: list[str]) -> str:
    """A command line for ``ExecStart=``: systemd splits words as a shell does (quotes)."""
    for word in argv:
        if "%" in word or "$" in word or "\n" in word:
            raise ConfigError(
                f"the path {word!r} holds a character systemd would expand ('%', '$' or a "
                "newline); move the kit or the install to a path without it"
            )
    return " ".join(shlex.quote(word) for word in argv)


def _owner(path: Path) -> str:
    """The user who owns ``path``: who can read the kit's private key."""
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return getpass.getuser()


def _unit(
    description: str,
    argv: list[str],
    *,
    user: str,
    env_file: Path,
    working_dir: Path,
    writable: list[Path],
    after: tuple[str, ...] = (),
    confined: bool = True,
    delegate: bool = False,
) -> str:
    lines = [
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=" + " ".join(["network-online.target", *after]),
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"WorkingDirectory={working_dir}",
        f"ExecStart={_quote(argv)}",
        "Environment=PYTHONUNBUFFERED=1",
        f"EnvironmentFile=-{env_file}",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=60",
        "KillMode=mixed",
    ]
    if delegate:
        lines.append("Delegate=yes")
    if confined:
        # a private /tmp would hide storage that lies under /tmp (a trial deployment)
        temporary = any(p.is_relative_to(t) for p in writable for t in _TEMP_DIRS)
        lines += [
            "NoNewPrivileges=yes",
            *([] if temporary else ["PrivateTmp=yes"]),
            "ProtectSystem=strict",
            "ReadWritePaths=" + " ".join(_quote([str(p)]) for p in writable),
        ]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def service_units(
    kit: Kit,
    *,
    python: Path | None = None,
    user: str | None = None,
    env_dir: Path = DEFAULT_ENV_DIR,
) -> list[Unit]:
    """The units that run ``kit``'s participant; :class:`ConfigError` for a kit that runs none.

    ``python`` defaults to this install's interpreter, ``user`` to the owner of the kit
    folder (who can read its private key).
    """
    kit_dir = kit.kit_dir.resolve()
    exe = [str(Path(python or sys.executable).absolute()), "-m", "fedsilo"]
    owner = user or _owner(kit_dir / "key.pem")
    fed = kit.federation
    if kit.role is Role.ORCHESTRATOR:
        storage = kit.storage_path
        name = f"fedsilo-orchestrator-{fed}"
        text = _unit(
            f"fedsilo orchestrator of federation {fed}",
            [*exe, "orchestrator", "start", "--kit", str(kit_dir)],
            user=owner,
            env_file=env_dir / f"{name}.env",
            working_dir=storage,
            writable=[storage],
        )
        return [Unit(f"{name}.service", text, "the orchestrator's machine")]
    if kit.role is not Role.SILO or kit.silo is None:
        raise ConfigError(
            f"kit '{kit.name}' is a {kit.role.value}'s kit, which runs no service: only the "
            "orchestrator's kit and each silo's kit do; give one of those with --kit",
            file=str(kit_dir),
        )
    silo, storage = kit.name, kit.storage_path
    approval = f"fedsilo-{silo}-approval"
    units = [
        Unit(
            f"{approval}.service",
            _unit(
                f"fedsilo approval endpoint of silo {silo} ({fed})",
                [*exe, "approval", "serve", "--kit", str(kit_dir)],
                user=owner,
                env_file=env_dir / f"{approval}.env",
                working_dir=storage,
                writable=[storage],
            ),
            f"silo {silo}'s machine",
        ),
        Unit(
            f"fedsilo-{silo}-agent.service",
            _unit(
                f"fedsilo agent of silo {silo} ({fed})",
                [*exe, "silo", "start", "--kit", str(kit_dir)],
                user=owner,
                env_file=env_dir / f"fedsilo-{silo}-agent.env",
                working_dir=storage,
                writable=[storage],
                after=(f"{approval}.service",),
                confined=False,
                delegate=True,
            ),
            f"silo {silo}'s machine",
        ),
    ]
    for compute in (kit.silo.compute, *kit.silo.computes):
        for node in compute.nodes:
            name = f"fedsilo-{silo}-node-{node.name}"
            units.append(
                Unit(
                    f"{name}.service",
                    _unit(
                        f"fedsilo node {node.name} of silo {silo}'s compute {compute.name}",
                        [*exe, "node", "start", "--kit", str(kit_dir), "--node", node.name],
                        user="root",  # it creates network namespaces and veth pairs
                        env_file=env_dir / f"{name}.env",
                        working_dir=storage,
                        writable=[storage],
                        confined=False,
                        delegate=True,
                    ),
                    f"node {node.name} ({node.address}) of silo {silo}",
                )
            )
    return units


def _storage_for(storage: Path, user: str) -> None:
    """Create the participant's storage root if missing (systemd needs it to start the
    unit), owned by the user the unit runs as when this runs as root."""
    if storage.is_dir():
        return
    storage.mkdir(parents=True)
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(
                f"no user '{user}' on this machine to own the storage root {storage}; "
                "create the user first (e.g. useradd --system fedsilo) or pass --user"
            ) from None
        os.chown(storage, entry.pw_uid, entry.pw_gid)


def write_units(
    kit_dir: Path,
    to: Path,
    *,
    python: Path | None = None,
    user: str | None = None,
    env_dir: Path = DEFAULT_ENV_DIR,
    force: bool = False,
) -> list[tuple[Path, Unit]]:
    """Write the units of the kit in ``kit_dir`` into folder ``to``; return them with paths.

    An existing unit file of the same name is a :class:`ConfigError` unless ``force``.
    """
    kit = load_kit(kit_dir)
    units = service_units(kit, python=python, user=user, env_dir=env_dir)
    _storage_for(kit.storage_path, user or _owner(kit.kit_dir / "key.pem"))
    to.mkdir(parents=True, exist_ok=True)
    written = []
    for unit in units:
        path = to / unit.name
        if path.exists() and not force:
            raise ConfigError(
                "a unit file of that name exists; pass --force to replace it", file=str(path)
            )
        tmp = path.with_name(f".{unit.name}.tmp")
        tmp.write_text(unit.text, encoding="utf-8")
        os.replace(tmp, path)
        written.append((path, unit))
    return written
