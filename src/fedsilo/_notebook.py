"""A federation from Python: provision, start, submit, follow, fetch the model, stop.

For a notebook or a script, without the CLI; every call is keyword-only and does what the
matching command does, through the same real processes::

    import fedsilo

    fed = fedsilo.Federation.provision(spec="federation.yaml", workspace="ws")
    fed.add_dataset(silo="silo-a", name="digits-train", path="a/train.npz")
    with fed.running():
        job = fed.submit(job="job.yaml")        # signed with the submitter's key
        info = job.wait()                        # JobInfo: state, rounds, metrics
        job.model(path="model.safetensors")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedsilo._suggest import did_you_mean, listing
from fedsilo.api import JobInfo, OrchestratorClient, StatusReport
from fedsilo.config import (
    Classification,
    FederationSpec,
    Kit,
    Role,
    Workspace,
    open_workspace,
)
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec, load_job, load_private_key
from fedsilo.provisioning import provision as provision_workspace

__all__ = ["Federation", "Job"]


@dataclass(frozen=True)
class Job:
    """A submitted job, followed through the kit that submitted it."""

    id: str
    kit: Kit

    def info(self) -> JobInfo:
        """The job's state and history now."""
        with OrchestratorClient(self.kit) as client:
            return client.job(self.id)

    def wait(
        self,
        *,
        timeout: float | None = None,
        on_update: Callable[[JobInfo], None] | None = None,
    ) -> JobInfo:
        """Follow the job until it ends (``on_update`` sees each change); its last state."""
        with OrchestratorClient(self.kit) as client:
            return client.wait(self.id, timeout=timeout, on_update=on_update)

    def cancel(self) -> bool:
        """Cancel the job; ``False`` when it was not running."""
        with OrchestratorClient(self.kit) as client:
            return client.cancel(self.id)

    def model(self, *, path: str | Path) -> Path:
        """Fetch the job's final global model (safetensors) to ``path``; return it."""
        target = Path(path)
        with OrchestratorClient(self.kit) as client:
            client.download_model(self.id, target)
        return target


class Federation:
    """A provisioned workspace and the federation that runs from it on this machine."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    @classmethod
    def provision(
        cls,
        *,
        spec: str | Path | FederationSpec,
        workspace: str | Path,
        force: bool = False,
    ) -> Federation:
        """Create the CA and every kit (``fedsilo provision``) from a spec file or object.

        A spec object's relative policy files are taken from the current folder.
        """
        if isinstance(spec, FederationSpec):
            out = Path(workspace).expanduser().resolve()
            out.parent.mkdir(parents=True, exist_ok=True)
            file = out.parent / f".{out.name}-federation.yaml"
            file.write_text(_spec_yaml(spec), encoding="utf-8")
            try:
                return cls(provision_workspace(file, out, force=force))
            finally:
                file.unlink(missing_ok=True)
        return cls(provision_workspace(Path(spec), Path(workspace), force=force))

    @classmethod
    def open(cls, *, workspace: str | Path) -> Federation:
        """A workspace provisioned earlier."""
        return cls(open_workspace(Path(workspace)))

    @property
    def root(self) -> Path:
        return self.workspace.root

    def kit(self, *, name: str | None = None) -> Kit:
        """A participant's kit (default: the first submitter's)."""
        return self.workspace.kit(name or self.workspace.submitter_name)

    def add_dataset(
        self,
        *,
        silo: str,
        name: str,
        path: str | Path,
        classification: Classification | str = Classification.SENSITIVE,
        replace: bool = False,
    ) -> None:
        """Register ``path`` in ``silo``'s catalog (``fedsilo data add``)."""
        from fedsilo.storage import add_dataset

        if silo not in self.workspace.silo_names:
            known = self.workspace.silo_names
            raise ConfigError(
                f"federation '{self.workspace.federation.name}' has no silo '{silo}'"
                f"{did_you_mean(silo, known)}; its silos: {listing(known)}"
            )
        add_dataset(
            self.workspace.kit(silo),
            name,
            Path(path),
            Classification(classification),
            replace=replace,
        )

    def start(self, *, timeout: float = 60.0) -> StatusReport:
        """Start the orchestrator and every silo (``fedsilo up``); return once all are online."""
        from fedsilo.runtime import up

        return up(self.root, timeout=timeout)

    def stop(self) -> None:
        """Stop every process :meth:`start` started (``fedsilo down``)."""
        from fedsilo.runtime import down

        down(self.root)

    @contextmanager
    def running(self, *, timeout: float = 60.0) -> Iterator[Federation]:
        """The federation started for the block and stopped after it, whatever happens."""
        self.start(timeout=timeout)
        try:
            yield self
        finally:
            self.stop()

    def status(self, *, kit: str | None = None) -> StatusReport:
        """Each silo and job as ``kit``'s participant sees them (``fedsilo status``)."""
        with OrchestratorClient(self.kit(name=kit)) as client:
            return client.status()

    def submit(
        self,
        *,
        job: str | Path | tuple[JobSpec, Path],
        submitter: str | None = None,
        sign: bool = True,
    ) -> Job:
        """Pack, sign with the submitter's key (as ``fedsilo submit`` does) and submit.

        ``job`` is a job spec file, or a spec object and its code folder.
        """
        spec, code = load_job(Path(job)) if isinstance(job, str | os.PathLike) else job
        kit = self.kit(name=submitter)
        if kit.role is not Role.SUBMITTER:
            raise ConfigError(
                f"'{kit.name}' is a {kit.role}, not a submitter", file=str(kit.kit_dir)
            )
        key = None
        if sign and kit.signing_key_file.exists():
            key = load_private_key(kit.signing_key_file)
        with OrchestratorClient(kit) as client:
            job_id = client.submit(spec, Path(code), signing_key=key)
        return Job(job_id, kit)


def _spec_yaml(spec: FederationSpec) -> str:
    """``spec`` as a federation.yaml, its relative policy files made absolute."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    for silo in data.get("silos", []):
        policy = silo.get("policy")
        if policy and not Path(os.path.expanduser(policy)).is_absolute():
            silo["policy"] = str((Path.cwd() / policy).resolve())
    return yaml.safe_dump(data, sort_keys=False)
