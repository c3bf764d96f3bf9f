"""``fedsilo certs``: renew a kit's certificates on its own machine, before they expire."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsilo.cli import _hints as hints
from fedsilo.cli._common import console
from fedsilo.config import Kit, Role, workspace_of
from fedsilo.errors import ConfigError
from fedsilo.provisioning._renew import Staged, install_renewal, make_renewal, stage_reply

certs_app = typer.Typer(
    name="certs",
    help="Renew this participant's certificates: new keys, signed by the CA, swapped in.",
    no_args_is_help=True,
)

KitArgument = Annotated[Path, typer.Option("--kit", help="The participant's kit folder.")]


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def renew(kit: KitArgument) -> None:
    """Make new private keys for every part of the kit (in KIT/renewal, beside the keys in
    use) and the renewal request to send to the federation's administrator."""
    made = make_renewal(kit)
    folder = made.request_file.parent
    keys = ", ".join(p.name for p in made.key_files)
    _say(f"wrote the new private keys {keys} in {folder} (mode 0600): they stay on this machine")
    _say(
        "the kit goes on with its current keys until the new certificates are installed; "
        f"send the renewal request to the federation's administrator: {made.request_file}"
    )
    console.print("new key fingerprints (sha256), for the administrator to compare:")
    for part, fingerprint in made.key_fingerprints.items():
        console.print(f"  {part:<9} {fingerprint}", highlight=False)
    ws = hints.command("ca", "sign", made.request_file.name, "-w", "WORKSPACE")
    _say(f"on the CA's machine the administrator signs it: {ws}")
    install = hints.command("certs", "install", "REPLY", "--kit", folder.parent)
    _say(f"then, with the reply: {install}")


def install(
    reply: Annotated[Path, typer.Argument(help="The reply fedsilo ca sign wrote.")],
    kit: KitArgument,
    unchecked: Annotated[
        bool,
        typer.Option(
            "--unchecked",
            help="Install without asking the orchestrator whether it knows the new "
            "certificate (it is not running, or not reachable from here).",
        ),
    ] = False,
) -> None:
    """Check the reply against the new keys and the kit's CA, confirm the orchestrator takes
    the new certificate, then swap the kit's key and certificate files for the new ones."""
    staged = stage_reply(reply, kit)
    if not unchecked:
        _confirm(staged, reply)
    installed = install_renewal(staged)
    _say(
        f"installed the renewed certificates of {installed.role} '{installed.name}' in "
        f"{installed.kit_dir} (sha256 {staged.fingerprint[:16]}...); kit.yaml and its policy "
        "are kept"
    )
    _next_steps(installed, staged)


def _confirm(staged: Staged, reply: Path) -> None:
    """Refuse unless the orchestrator answers the new certificate as this participant."""
    from fedsilo.api import OrchestratorClient
    from fedsilo.errors import CertificateRefused, OrchestratorUnavailable, TransportError

    name = staged.kit.name
    renew_member = hints.command("members", "renew", name, reply, "--kit", "ADMIN_KIT")
    try:
        with OrchestratorClient(staged.staged) as client:
            who = client.whoami()
    except CertificateRefused:
        raise ConfigError(
            f"not installed: the orchestrator does not take the new certificate of '{name}' "
            "yet. The federation's administrator gives it to the member first (the "
            f"participant's kit keeps working until then), on their machine: {renew_member}",
            file=str(reply),
        ) from None
    except TransportError as exc:
        why = (
            f"the orchestrator at {staged.kit.orchestrator_url} is not reachable from here"
            if isinstance(exc, OrchestratorUnavailable)
            else str(exc)
        )
        raise ConfigError(
            f"not installed: cannot ask the orchestrator whether it takes the new certificate "
            f"({why}); install once it answers, or with --unchecked if the administrator has "
            f"run: {renew_member}",
            file=str(reply),
        ) from None
    if who.get("name") != name:
        raise ConfigError(
            f"not installed: the orchestrator takes the new certificate as '{who.get('name')}', "
            f"not as '{name}'",
            file=str(reply),
        )


def _next_steps(kit: Kit, staged: Staged) -> None:
    if kit.role is Role.SILO:
        units = f"fedsilo-{kit.name}-agent fedsilo-{kit.name}-approval"
        workspace = workspace_of(kit)
        if workspace is not None:
            listed = hints.command("status", workspace)
            again = f"{hints.up(workspace)} (their process ids: {listed})"
        else:
            agent = hints.command("silo", "start", "--kit", kit.kit_dir)
            endpoint = hints.command("approval", "serve", "--kit", kit.kit_dir)
            again = f"{endpoint} and {agent}"
        _say(
            "now restart this silo's approval endpoint and agent, which hold the old "
            f"certificate until then (a restarted agent rejoins its running job): under "
            f"systemd, systemctl restart {units}; started by hand, stop them and run {again}"
        )
    else:
        _say("the next command run with this kit uses the new certificate")
    revoke = hints.command(
        "members", "revoke", kit.name, "--fingerprint", staged.renews[:16], "--kit", "ADMIN_KIT"
    )
    _say(f"once it runs on the new certificate, the administrator revokes the old one: {revoke}")


certs_app.command("renew")(renew)
certs_app.command("install")(install)


def register(app: typer.Typer) -> None:
    """Add the ``certs`` group to the root app."""
    app.add_typer(certs_app)
