"""Starting a job's worker for a step: once its compute has room, within its grant.

A worker runs in a control group of its own with its grant's limits, sees only the GPUs
it was given, and is held by the job's session (:class:`~fedsilo.silo._session.Step`)
until the step or the job ends. A step over several machines also gets its ranks on each
other machine, through their node services, and a network namespace on each that
reaches the others only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fedsilo.api import OrchestratorClient
from fedsilo.api._messages import JobTask
from fedsilo.audit import AuditLog
from fedsilo.config import ComputeSpec, Kit, NodeSpec, ResourceGrant
from fedsilo.errors import FedsiloError
from fedsilo.jobs import SiloStep
from fedsilo.silo._capacity import Allocation, ComputePool, Withdrawn
from fedsilo.silo._computes import SiloComputes
from fedsilo.silo._errors import SiloErrors
from fedsilo.silo._gpu import gpu_binds
from fedsilo.silo._limits import Limits
from fedsilo.silo._network import JobNetwork
from fedsilo.silo._node import RemoteStep, StartRanks
from fedsilo.silo._protocol import Init
from fedsilo.silo._sandbox import SandboxSpec
from fedsilo.silo._session import Holdings, JobSession, Step
from fedsilo.silo._workerproc import StepLimits, WorkerProcess

__all__ = ["Launcher"]


class Launcher:
    """Starts job workers on the silo's computes (``sandboxed`` in bubblewrap or not).

    ``work`` is the agent's client for the orchestrator, told of a step that waits for
    room; ``errors`` scrubs host paths from what it is told.
    """

    def __init__(
        self,
        kit: Kit,
        *,
        computes: SiloComputes,
        audit: AuditLog,
        work: OrchestratorClient,
        errors: SiloErrors,
        sandboxed: bool,
    ) -> None:
        assert kit.silo is not None
        self.kit = kit
        self.silo = kit.name
        self.spec = kit.silo
        self.computes = computes
        self.audit = audit
        self.work = work
        self.errors = errors
        self.sandboxed = sandboxed

    def spawn(
        self,
        task: JobTask,
        session: JobSession,
        step: SiloStep,
        compute: ComputeSpec,
        grants: dict[SiloStep, ResourceGrant],
        sandbox: SandboxSpec | None,
        init: dict[str, Any],
    ) -> Step:
        """A job worker for ``step`` on ``compute``, once the compute has room for it,
        initialised with the job's code and inputs and held by ``session``."""
        job_id = task.job_id
        granted = grants[step]
        holder = job_id if step is SiloStep.TRAIN else f"{job_id}:{step.value}"

        def waiting(why: str) -> bool:
            detail = f"queued in silo '{self.silo}' for compute '{compute.name}': {why}"
            return not session.closed.is_set() and self.work.progress(
                task.task_id, self.errors.scrub(detail)
            )

        machines: list[tuple[NodeSpec | None, ComputePool]] = (
            list(self.computes.machines(compute.name)[: granted.nodes])
            if granted.nodes > 1
            else [(None, self.computes.pool(compute.name))]
        )
        holdings = Holdings()
        try:
            allocations = []
            for _, pool in machines:
                allocations.append(pool.acquire(holder, granted, waiting=waiting))
                holdings.holds.append((pool, holder))
            holdings.group = self.computes.limiter.group(
                f"{job_id}.{step.value}",
                Limits(
                    memory_bytes=granted.memory,
                    processes=granted.processes,
                    cpu_cores=granted.cpu,
                    file_bytes=granted.disk,
                ),
            )
            environment = {
                **compute.environment,
                "OMP_NUM_THREADS": str(granted.threads),
                "MKL_NUM_THREADS": str(granted.threads),
            }
            devices = allocations[0].devices
            job_sandbox = sandbox
            if devices:
                environment["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
                if sandbox is not None:
                    binds = gpu_binds(devices)
                    job_sandbox = dataclasses.replace(
                        sandbox,
                        devices=binds.devices,
                        system=binds.read_only,
                        library_path=binds.library_dirs,
                    )
            spread = None
            if granted.nodes > 1:
                spread = self._spread(
                    task, session, holdings, machines, allocations, granted, sandbox, init
                )
                if job_sandbox is not None:
                    job_sandbox = dataclasses.replace(job_sandbox, share_net=True)
            work = Path(init["work_dir"])
            worker = WorkerProcess(
                silo=self.silo,
                cwd=work,
                log_file=session.job_dir / "worker.log",
                sandbox=job_sandbox,
                environment=environment,
                group=holdings.group,
                limits=StepLimits(
                    max_step_seconds=granted.max_step_seconds,
                    disk=granted.disk,
                    work_dir=work,
                    memory=granted.memory,
                    processes=granted.processes,
                ),
                prefix=holdings.network.prefix() if holdings.network is not None else (),
            )
        except Withdrawn:
            holdings.give_back()
            raise FedsiloError(
                f"job {job_id} was withdrawn while it waited for compute '{compute.name}'"
            ) from None
        except BaseException:
            holdings.give_back()
            raise
        held = Step(worker, holdings)
        if not session.attach(held, train=step is SiloStep.TRAIN):
            raise FedsiloError(f"job {job_id} was released while its worker started")
        self.audit.append(
            "job.started",
            job_id=job_id,
            sandbox=self.spec.sandbox,
            compute=compute.name,
            step=step.value,
            worker_pid=worker.pid,
            enforcement=self.computes.limiter.enforcement.value,
            resources=granted.describe(),
            gpus=list(devices),
            nodes=[node.name for node, _ in machines if node is not None],
        )
        worker.request(
            Init(
                **init,
                threads=granted.threads,
                device="cuda" if devices else "cpu",
                workers=granted.workers,
                machines=spread,
            )
        )
        return held

    def _spread(
        self,
        task: JobTask,
        session: JobSession,
        holdings: Holdings,
        machines: list[tuple[NodeSpec | None, ComputePool]],
        allocations: list[Allocation],
        granted: ResourceGrant,
        sandbox: SandboxSpec | None,
        init: dict[str, Any],
    ) -> dict[str, Any]:
        """Network namespaces for a step over several machines, and its ranks on the others.

        Returns what this machine's launcher needs to join them (it is node rank 0).
        """
        addresses = [a.address for a in allocations]
        if any(a is None for a in addresses):
            raise FedsiloError("a machine of the compute gave the step no job address")
        head = machines[0][0]
        assert head is not None
        step_id = f"{task.job_id}.train"
        holdings.network = JobNetwork.for_step(
            f"{step_id}@{head.name}",
            parent=head.interface,
            address=str(addresses[0]),
            peers=tuple(str(a) for a in addresses[1:]),
        )
        holdings.network.create()
        paths = sandbox or SandboxSpec(
            code_dir=Path(init["code_dir"]),
            inputs=tuple(Path(p) for p in init["inputs"].values()),
            writable=(Path(init["work_dir"]), session.params),
        )
        for rank, ((node, _), allocation) in enumerate(zip(machines, allocations, strict=True)):
            if rank == 0 or node is None:
                continue
            request = StartRanks(
                step=step_id,
                node_rank=rank,
                nnodes=len(machines),
                workers=granted.workers,
                threads=granted.threads,
                master=str(addresses[0]),
                address=str(allocation.address),
                peers=tuple(str(a) for j, a in enumerate(addresses) if j != rank),
                code_dir=str(paths.code_dir),
                inputs=tuple(str(p) for p in paths.inputs),
                writable=tuple(str(p) for p in paths.writable),
                environment=dict(self.computes.offers[granted.compute].spec.environment),
                memory=granted.memory,
                processes=granted.processes,
                cpu=granted.cpu,
                disk=granted.disk,
                sandbox=self.sandboxed,
                gpus=allocation.devices,
            )
            holdings.remotes.append(RemoteStep(self.kit, node, request))
        return {
            "count": len(machines),
            "rank": 0,
            "master": str(addresses[0]),
            "address": str(addresses[0]),
        }
