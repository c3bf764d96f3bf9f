"""One rank of a job step that a silo runs on several processes (torch.distributed).

Started by torch's launcher (``torch.distributed.run``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; run as ``python -m
fedsilo.silo._rank SOCKET``. The ranks join one process group (NCCL on GPUs, gloo
otherwise). Rank 0 reads each command from the job worker on ``SOCKET`` and broadcasts
it, as JSON bytes over a gloo group, to the others; every rank runs it
(:class:`~fedsilo.silo._worker.Worker`), and rank 0 answers. A rank whose command raises
writes its error to ``FEDSILO_RANK_ERRORS/rank-N.json`` and exits, and torch's launcher
stops the others.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _broadcast(payload: bytes | None, group: Any) -> bytes | None:
    """Rank 0's ``payload`` in every rank (``None``: the job worker has gone)."""
    import torch
    import torch.distributed as dist

    size = torch.tensor([-1 if payload is None else len(payload)], dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    length = int(size.item())
    if length < 0:
        return None
    if payload is not None:
        buffer = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    else:
        buffer = torch.empty(length, dtype=torch.uint8)
    dist.broadcast(buffer, src=0, group=group)
    return bytes(buffer.numpy().tobytes())


def _record(rank: int, exc: BaseException) -> None:
    """Leave this rank's error for the job worker, and on its log."""
    tb = traceback.format_exc(limit=-8)
    print(f"rank {rank}:\n{tb}", file=sys.stderr, flush=True)
    folder = os.environ.get("FEDSILO_RANK_ERRORS")
    if folder:
        error = {
            "error": f"{type(exc).__name__}: {exc}",
            "error_class": type(exc).__name__,
            "traceback": tb,
        }
        Path(folder, f"rank-{rank}.json").write_text(json.dumps(error))


def main(argv: list[str] | None = None) -> int:
    """Join the process group and run the job worker's commands until it is done."""
    args = sys.argv[1:] if argv is None else argv
    from fedsilo.silo._worker import Worker, die_with_parent

    die_with_parent()
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    import torch
    import torch.distributed as dist

    from fedsilo._distributed import Distributed
    from fedsilo.silo._protocol import read_message, write_message

    cuda = bool(os.environ.get("CUDA_VISIBLE_DEVICES")) and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    try:
        if cuda:
            per_rank = max(1, torch.cuda.device_count() // int(os.environ["LOCAL_WORLD_SIZE"]))
            torch.cuda.set_device(local * per_rank)
        dist.init_process_group(backend)
        control = dist.new_group(backend="gloo") if backend == "nccl" else None
    except Exception as exc:
        _record(rank, exc)
        return 1
    worker = Worker(Distributed(rank=rank, world_size=world, local_rank=local, backend=backend))
    conn = reader = writer = None
    if rank == 0:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(args[0])
        reader, writer = conn.makefile("rb"), conn.makefile("wb")
    while True:
        payload = None
        if reader is not None:
            msg = read_message(reader)
            payload = None if msg is None else json.dumps(msg).encode()
        received = _broadcast(payload, control)
        if received is None:
            break
        command: dict[str, Any] = json.loads(received)
        if command.get("op") == "shutdown":
            break
        try:
            reply = worker.handle(command).model_dump(exclude_none=True)
        except Exception as exc:
            _record(rank, exc)
            os._exit(1)  # torch's launcher stops the other ranks
        if writer is not None:
            write_message(writer, reply)
    dist.destroy_process_group()
    if conn is not None:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
