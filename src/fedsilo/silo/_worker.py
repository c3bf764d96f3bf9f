"""The job worker: one process per FL job in a silo, alive across rounds.

It imports the task's code (never the agent), receives commands from the agent over a
pipe, reads and writes parameters as safetensors files in the job's folder, and answers
with metrics. Run as ``python -m fedsilo.silo._worker IN_FD OUT_FD``. When the silo
grants the step several ranks, it starts them with torch's launcher and relays each
command to them (:mod:`fedsilo.silo._ranks`).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from fedsilo._distributed import Distributed
from fedsilo.silo._protocol import (
    NICENESS,
    Build,
    Evaluate,
    Failure,
    Fit,
    Init,
    Noop,
    Prepare,
    Preprocess,
    Reply,
    parse_command,
    read_message,
    write_message,
)

__all__ = ["NICENESS", "Worker", "die_with_parent", "failure", "main"]


class Worker:
    """Runs one process's share of a job step: the whole step, or one rank's of it.

    With several ranks (``ranks.world_size > 1``) every rank gets every command, builds
    and trains the model together with the others; rank 0 alone preprocesses, evaluates
    and writes the parameters that leave the silo.
    """

    def __init__(self, ranks: Distributed | None = None) -> None:
        self.runner: Any = None
        self.ranks = ranks or Distributed()

    def handle(self, message: dict[str, Any]) -> Reply:
        """Run one command (checked against :data:`~fedsilo.silo._protocol.Command`)."""
        command = parse_command(message)
        if isinstance(command, Noop):
            return Reply(pid=os.getpid())
        if isinstance(command, Init):
            return self._init(command)
        if self.runner is None:
            raise RuntimeError(f"'{command.op}' before 'init'")
        from fedsilo.tensors import load_parameters, save_parameters

        main = self.ranks.is_main
        if isinstance(command, Prepare):  # preprocess (rank 0), then build (every rank)
            if main:
                self.runner.preprocess()
            self.ranks.all_reduce(0.0)  # the others wait for what preprocess wrote
            params = self.runner.build()
            return Reply(digest=save_parameters(params, Path(command.out)) if main else None)
        if isinstance(command, Preprocess):  # preprocessing alone, on a compute of its own
            self.runner.preprocess()
            return Reply()
        if isinstance(command, Build):  # the model alone, on the compute that trains it
            params = self.runner.build()
            return Reply(digest=save_parameters(params, Path(command.out)) if main else None)
        if isinstance(command, Fit):
            global_params = load_parameters(Path(command.params))
            evaluated = None
            if command.evaluate_first and main:
                evaluated = self.runner.evaluate(command.round - 1, global_params)
            params, metrics = self.runner.fit(command.round, global_params, command.config)
            if not main:
                return Reply()
            digest = save_parameters(params, Path(command.out))
            return Reply(digest=digest, train_metrics=metrics, eval_metrics=evaluated)
        if isinstance(command, Evaluate):
            if not main:
                return Reply()
            global_params = load_parameters(Path(command.params))
            return Reply(eval_metrics=self.runner.evaluate(command.round, global_params))
        raise RuntimeError(f"'{command.op}' is not a command a worker runs")

    def _init(self, msg: Init) -> Reply:
        from fedsilo.jobs import Hyperparameters
        from fedsilo.privacy import PrivacySpec
        from fedsilo.task import SiloRunner, load_task

        task = load_task(Path(msg.code_dir), msg.entrypoint)
        device: str = msg.device
        if device == "cuda":  # this rank's first GPU (the launcher set it), 0 in one process
            import torch

            device = f"cuda:{torch.cuda.current_device()}"
        self.runner = SiloRunner(
            task,
            silo=msg.silo,
            inputs={role: Path(p) for role, p in msg.inputs.items()},
            work_dir=Path(msg.work_dir),
            hyperparameters=Hyperparameters.model_validate(msg.hyperparameters),
            rounds=msg.rounds,
            privacy=PrivacySpec.model_validate(msg.privacy),
            threads=msg.threads,
            device=device,
            distributed=self.ranks,
        )
        return Reply()


def failure(exc: BaseException) -> dict[str, Any]:
    """The reply for a command that raised: the error, its class and its traceback's tail.

    The agent keeps all of it in the silo and names the class to the orchestrator only
    if it is one it knows (:mod:`fedsilo.silo._errors`): task code runs in this process
    and could make this reply say anything.
    """
    tb = traceback.format_exc(limit=-8)
    print(tb, file=sys.stderr, flush=True)
    return Failure(
        error=f"{type(exc).__name__}: {exc}", error_class=type(exc).__name__, traceback=tb
    ).model_dump()


def die_with_parent() -> None:
    """Ask Linux to kill this process when the agent that started it dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def _yield_cpu() -> None:
    """Lower this process's priority by :data:`NICENESS` (before the task imports torch)."""
    if hasattr(os, "nice"):
        try:
            os.nice(NICENESS)
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    """Serve commands until the agent closes the pipe or says ``shutdown``."""
    args = sys.argv[1:] if argv is None else argv
    from fedsilo.silo._limits import apply_rlimits

    apply_rlimits()  # where the silo has no control groups: before any task code runs
    die_with_parent()
    _yield_cpu()
    inp = os.fdopen(int(args[0]), "rb")
    out = os.fdopen(int(args[1]), "wb")
    worker = Worker()
    while True:
        msg = read_message(inp)
        if msg is None or msg.get("op") == "shutdown":
            return 0
        ranked = int(msg.get("workers", 1)) > 1 or msg.get("machines") is not None
        if msg.get("op") == "init" and ranked:
            from fedsilo.silo._ranks import serve_ranks

            return serve_ranks(msg, inp, out)  # this process now relays to the ranks
        try:
            reply = worker.handle(msg).model_dump(exclude_none=True)
        except Exception as exc:
            reply = failure(exc)
        write_message(out, reply)


if __name__ == "__main__":
    sys.exit(main())
