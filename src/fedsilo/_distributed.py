"""``ctx.distributed``: a task's view of the ranks that train one silo's step together.

When a silo grants a job's train step several ranks (``resources: {workers: N}``), each
rank runs the task's ``train`` in its own process, started by torch's launcher, and the
ranks form one torch.distributed process group (gloo on CPU, NCCL on GPUs). In one
process (``fedsilo sim``, or a step of one rank) the same object stands for a group of
one, and every helper is then the identity, so one task module serves both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Distributed"]


@dataclass(frozen=True)
class Distributed:
    """The rank this process is in its silo's step, and helpers to share the work.

    ``rank`` runs from 0 to ``world_size - 1``; ``local_rank`` is the rank on this machine
    (its GPU, numbered from 0 among the granted ones); ``backend`` is ``gloo``, ``nccl`` or
    ``None`` for a group of one. Only rank 0's model leaves the silo; every rank's
    ``num_samples`` counts.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, whose model and metrics are the silo's."""
        return self.rank == 0

    def part(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of one batch: the ranks' shares, in rank order, are the batch.

        Shares differ in size by at most one (``torch.tensor_split``).
        """
        if self.world_size == 1:
            return batch
        import torch

        return torch.tensor_split(batch, self.world_size)[self.rank]

    def batches(
        self, count: int, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[torch.Tensor]:
        """One shuffled pass over ``count`` examples in batches: this rank's share of each.

        Every rank draws the same order from the same seed, so the ranks' shares of a batch
        together are exactly the batch one process would take; weigh each rank's mean loss
        by :meth:`weight` and the ranks' averaged gradient is that process's.
        """
        import torch

        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            yield self.part(order[start : start + batch_size])

    def weight(self, share: int, batch: int) -> float:
        """What a rank's mean loss over ``share`` examples of a ``batch`` is multiplied by so
        that the gradient torch.distributed averages over the ranks is the batch's mean
        gradient (1 when the batch splits evenly, or in one process)."""
        if batch <= 0:
            return 0.0
        return self.world_size * share / batch

    def sampler(
        self, dataset: Any, *, shuffle: bool = True, seed: int = 0
    ) -> torch.utils.data.Sampler[int]:
        """A sampler of this rank's share of ``dataset`` for a ``DataLoader`` (its batch
        size is then per rank). In a group of one, every example, shuffled from ``seed``."""
        import torch.utils.data

        if self.world_size > 1:
            return torch.utils.data.DistributedSampler(
                dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=seed
            )
        if not shuffle:
            return torch.utils.data.SequentialSampler(dataset)
        import torch

        return torch.utils.data.RandomSampler(
            dataset, generator=torch.Generator().manual_seed(seed)
        )

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as torch's DistributedDataParallel, which averages gradients over the
        ranks in ``backward`` (``model`` itself in a group of one). Train through what it
        returns; ``model`` shares its parameters and holds the trained weights."""
        if self.world_size == 1:
            return model
        import torch
        from torch.nn.parallel import DistributedDataParallel

        devices = [torch.cuda.current_device()] if self.backend == "nccl" else None
        return DistributedDataParallel(model, device_ids=devices)

    def all_reduce(self, value: float) -> float:
        """The sum of ``value`` over every rank (``value`` in a group of one)."""
        if self.world_size == 1:
            return value
        return self._reduce([value])[0]

    def _reduce(self, values: list[float], op: str = "sum") -> list[float]:
        import torch
        import torch.distributed as dist

        device = (
            torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None
        )
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op.upper()))
        return [float(v) for v in tensor.tolist()]

    def combine(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Every rank's metrics as the silo's: ``num_samples`` summed over the ranks, every
        other metric averaged weighted by each rank's ``num_samples``.

        Every rank must report the same metric names; a rank that does not is an error
        (raised on every rank), never a mismatched sum.
        """
        if self.world_size == 1:
            return dict(metrics)
        names = sorted(metrics)
        digest = hashlib.sha256("\0".join(names).encode()).digest()
        tag = float(int.from_bytes(digest[:6], "big"))  # exact in a float64
        low, high = self._reduce([tag], "min")[0], self._reduce([tag], "max")[0]
        if low != high:
            raise ValueError(
                f"the ranks of this silo reported different metrics from train() (rank "
                f"{self.rank}: {', '.join(names)}); report the same names in every rank"
            )
        samples = float(metrics["num_samples"])
        sums = self._reduce([samples, *(float(metrics[k]) * samples for k in names)])
        total = sums[0]
        out = {}
        for name, weighted in zip(names, sums[1:], strict=True):
            out[name] = weighted / total if total > 0 else float(metrics[name])
        out["num_samples"] = total
        return out
