"""A provisioned workspace, read back: its spec, its CA certificate and its kits.

The workspace is laid out as::

    ROOT/federation.yaml        a copy of the spec
    ROOT/ca/ca.crt, ca.key      the federation CA (its key is in no kit)
    ROOT/kits/<name>/           each participant's kit

:func:`fedsilo.provisioning.provision` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsilo._suggest import did_you_mean, listing
from fedsilo.config._federation import ORCHESTRATOR_NAME, FederationSpec, load_federation
from fedsilo.config._kit import Kit, load_kit
from fedsilo.errors import ConfigError, WorkspaceError

__all__ = ["FEDERATION_FILE", "Workspace", "open_workspace", "workspace_of"]

FEDERATION_FILE = "federation.yaml"


@dataclass(frozen=True)
class Workspace:
    """A provisioned workspace: the spec, the CA and every participant's kit, under ``root``."""

    root: Path
    federation: FederationSpec

    @property
    def participant_names(self) -> tuple[str, ...]:
        """Every participant: the orchestrator, the silos, the submitters, then the
        administrators who are not submitters."""
        spec = self.federation
        return (ORCHESTRATOR_NAME, *self.silo_names, *spec.submitters, *spec.admin_only)

    @property
    def silo_names(self) -> tuple[str, ...]:
        """The silos' names, in the order of the spec."""
        return self.federation.silo_names

    @property
    def submitter_name(self) -> str:
        """The first submitter, the one the CLI acts as by default."""
        return self.federation.submitters[0]

    @property
    def logs_dir(self) -> Path:
        """Where the local processes of ``fedsilo up`` write their logs."""
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        """Where the local processes of ``fedsilo up`` keep pid files and sockets."""
        return self.root / "run"

    @property
    def ca_file(self) -> Path:
        """The federation CA certificate."""
        return self.root / "ca" / "ca.crt"

    def kit_dir(self, name: str) -> Path:
        """The kit folder of participant ``name`` (:class:`ConfigError` if unknown)."""
        if name not in self.participant_names:
            raise ConfigError(
                f"federation '{self.federation.name}' has no participant '{name}'"
                f"{did_you_mean(name, self.participant_names)}; "
                f"its participants: {listing(self.participant_names)}"
            )
        return self.root / "kits" / name

    def kit(self, name: str) -> Kit:
        """The loaded kit of participant ``name`` (:class:`ConfigError` if unknown)."""
        return load_kit(self.kit_dir(name))


def open_workspace(root: Path) -> Workspace:
    """Open the workspace provisioned at ``root``; :class:`WorkspaceError` if there is none."""
    folder = Path(root).expanduser().resolve()
    if not (folder / FEDERATION_FILE).is_file() or not (folder / "kits").is_dir():
        raise WorkspaceError(
            f"{folder} is not a provisioned workspace; create one with: "
            "fedsilo provision federation.yaml --out DIR"
        )
    return Workspace(root=folder, federation=load_federation(folder / FEDERATION_FILE))


def workspace_of(kit: Kit) -> Path | None:
    """The workspace ``kit`` was loaded from (``WORKSPACE/kits/NAME``), or ``None`` for a
    kit on its own: where a message may tell a person to run ``fedsilo up WORKSPACE``."""
    try:
        folder = kit.kit_dir
    except ConfigError:
        return None
    root = folder.parent.parent
    if folder.parent.name != "kits" or not (root / FEDERATION_FILE).is_file():
        return None
    return root
