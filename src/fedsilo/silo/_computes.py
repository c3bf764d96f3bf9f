"""A silo's computes as its agent runs them: offers, grants, capacity and enforcement.

Built once when the agent starts, from the silo's own spec and its own machine: a compute
that declares GPUs the machine lacks, or ``limits: {enforcement: cgroups}`` where control
groups cannot be made, stops the agent there with a clear error.
"""

from __future__ import annotations

import logging

from fedsilo.api import ComputeReport, SiloReport
from fedsilo.config import ComputeSpec, NodeSpec, ResourceGrant, ResourceRequest, SiloSpec
from fedsilo.errors import ConfigError
from fedsilo.silo._capacity import ComputePool
from fedsilo.silo._gpu import check_gpus
from fedsilo.silo._grant import ComputeOffer, Machine, grant
from fedsilo.silo._limits import Enforcement, Limiter

__all__ = ["SiloComputes"]

log = logging.getLogger("fedsilo.agent")


class SiloComputes:
    """The computes of one silo: what each offers, who holds what, how limits hold."""

    def __init__(self, spec: SiloSpec, *, cores: int | None = None) -> None:
        self.spec = spec
        machine = Machine.probe(cores=cores)
        self.offers = {c.name: ComputeOffer.of(c, machine) for c in spec.all_computes()}
        self.pools: dict[str, ComputePool] = {}
        for name, offer in self.offers.items():
            if not offer.spec.nodes:
                self.pools[name] = ComputePool(offer)
            for node in offer.spec.nodes:  # each machine of the compute has the same
                addresses = tuple(str(a) for a in node.job_addresses)
                self.pools[f"{name}@{node.name}"] = ComputePool(offer, addresses)
        for compute in spec.all_computes():
            if compute.gpus:
                check_gpus(spec.name, compute.name, compute.gpus)
        self.limiter = Limiter.detect(spec.name, parent=spec.limits.cgroup_parent)
        if self.limiter.enforcement is Enforcement.RLIMITS:
            if spec.limits.enforcement == "cgroups":
                raise ConfigError(
                    f"silo '{spec.name}' requires control groups for its limits "
                    f"(limits: {{enforcement: cgroups}}), but none can be made here: "
                    f"{self.limiter.reason}",
                    field=f"silos.{spec.name}.limits.enforcement",
                )
            log.warning(
                "silo '%s': job limits fall back to rlimits, which bound each process rather "
                "than each job's whole tree: %s",
                spec.name,
                self.limiter.reason,
            )
        else:
            log.info(
                "silo '%s': job limits enforced by %s", spec.name, self.limiter.enforcement.value
            )

    def grant(self, compute: ComputeSpec, request: ResourceRequest, step: str) -> ResourceGrant:
        """What this silo grants ``step`` on ``compute``; ``ResourceRefused`` if it cannot."""
        return grant(self.offers[compute.name], request, silo=self.spec.name, step=step)

    def pool(self, compute: str) -> ComputePool:
        """The capacity of ``compute`` (of its first machine, the agent's, if it has several)."""
        nodes = self.offers[compute].spec.nodes
        return self.pools[f"{compute}@{nodes[0].name}" if nodes else compute]

    def machines(self, compute: str) -> list[tuple[NodeSpec, ComputePool]]:
        """Each machine of ``compute`` with its capacity, the agent's first."""
        return [(n, self.pools[f"{compute}@{n.name}"]) for n in self.offers[compute].spec.nodes]

    def report(self, sandbox: str) -> SiloReport:
        """This silo's computes, their limits and their use now, for ``fedsilo status``."""
        computes = []
        for name, pool in self.pools.items():
            offer = pool.offer
            spec, state = offer.spec, pool.state()
            computes.append(
                ComputeReport(
                    name=name,
                    kind=spec.kind,
                    threads=offer.threads,
                    gpus=offer.gpus,
                    memory=offer.memory,
                    job_threads=offer.job_threads,
                    job_gpus=offer.job_gpus,
                    job_memory=offer.job_memory,
                    processes=spec.processes,
                    cpu=spec.cpu,
                    disk=spec.disk,
                    max_step_seconds=spec.max_step_seconds,
                    threads_used=state.threads_used,
                    gpus_used=state.gpus_used,
                    memory_used=state.memory_used,
                    running=state.running,
                    queued=state.queued,
                )
            )
        return SiloReport(
            sandbox=sandbox,
            enforcement=self.limiter.enforcement.value,
            enforcement_note=self.limiter.reason,
            computes=tuple(computes),
        )

    def close(self) -> None:
        self.limiter.close()
