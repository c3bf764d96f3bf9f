"""The job worker: one process per FL job in a silo, alive across rounds.

It imports the task's code (never the agent), receives commands from the agent over a
pipe, reads and writes parameters as safetensors files in the job's folder, and answers
with metrics. Run as ``python -m fedsilo.silo._worker IN_FD OUT_FD``.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from fedsilo.silo._protocol import read_message, write_message

__all__ = ["NICENESS", "main"]

NICENESS = 10
"""How much less CPU the job worker asks for than the agent, under contention.

Training may take every core; the agent must still heartbeat, answer approvals and move
parameters, or the orchestrator counts the silo as disconnected. On a machine that runs
nothing else the worker still gets all of the CPU. The agent's thread that computes
secure-aggregation masks ahead, work off a round's critical path, takes the same.
"""


class _Worker:
    def __init__(self) -> None:
        self.runner: Any = None

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "noop":
            return {"pid": os.getpid()}
        if op == "init":
            return self._init(msg)
        if self.runner is None:
            raise RuntimeError(f"'{op}' before 'init'")
        from fedsilo.tensors import load_parameters, save_parameters

        if op == "prepare":  # preprocess, then build the model
            params = self.runner.prepare()
            return {"digest": save_parameters(params, Path(msg["out"]))}
        if op == "preprocess":  # preprocessing alone, on a compute of its own
            self.runner.preprocess()
            return {}
        if op == "build":  # the model alone, on the compute that trains it
            params = self.runner.build()
            return {"digest": save_parameters(params, Path(msg["out"]))}
        if op == "fit":
            global_params = load_parameters(Path(msg["params"]))
            reply: dict[str, Any] = {}
            if msg.get("evaluate_first"):
                reply["eval_metrics"] = self.runner.evaluate(msg["round"] - 1, global_params)
            params, metrics = self.runner.fit(msg["round"], global_params, msg.get("config"))
            reply["train_metrics"] = metrics
            reply["digest"] = save_parameters(params, Path(msg["out"]))
            return reply
        if op == "evaluate":
            global_params = load_parameters(Path(msg["params"]))
            return {"eval_metrics": self.runner.evaluate(msg["round"], global_params)}
        raise RuntimeError(f"unknown operation '{op}'")

    def _init(self, msg: dict[str, Any]) -> dict[str, Any]:
        from fedsilo.jobs import Hyperparameters
        from fedsilo.privacy import PrivacySpec
        from fedsilo.task import SiloRunner, load_task

        task = load_task(Path(msg["code_dir"]), msg["entrypoint"])
        self.runner = SiloRunner(
            task,
            silo=msg["silo"],
            inputs={role: Path(p) for role, p in msg["inputs"].items()},
            work_dir=Path(msg["work_dir"]),
            hyperparameters=Hyperparameters.model_validate(msg["hyperparameters"]),
            rounds=int(msg.get("rounds", 1)),
            privacy=PrivacySpec.model_validate(msg.get("privacy") or {}),
            threads=int(msg.get("threads", 1)),
            device=str(msg.get("device", "cpu")),
        )
        return {}


def _die_with_parent() -> None:
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
    _die_with_parent()
    _yield_cpu()
    inp = os.fdopen(int(args[0]), "rb")
    out = os.fdopen(int(args[1]), "wb")
    worker = _Worker()
    while True:
        msg = read_message(inp)
        if msg is None or msg.get("op") == "shutdown":
            return 0
        try:
            reply = {"ok": True, **worker.handle(msg)}
        except Exception as exc:
            tb = traceback.format_exc(limit=-8)
            print(tb, file=sys.stderr, flush=True)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": tb}
        write_message(out, reply)


if __name__ == "__main__":
    sys.exit(main())
