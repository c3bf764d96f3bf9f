"""Messages between a silo agent and its job worker: JSON lines over a pipe, never pickle.

Each command is a model of its own, told apart by ``op`` (:data:`Command`); the worker
answers :class:`Reply`, or :class:`Failure` when the command raised. Both ends check
what they read against these models: the worker runs task code, which could make its
answer say anything.
"""

from __future__ import annotations

import json
from typing import IO, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, TypeAdapter

__all__ = [
    "NICENESS",
    "Build",
    "Command",
    "Evaluate",
    "Failure",
    "Fit",
    "Init",
    "Noop",
    "Prepare",
    "Preprocess",
    "Reply",
    "parse_command",
    "parse_reply",
    "read_message",
    "write_message",
]

MAX_LINE = 16 * 1024 * 1024

NICENESS = 10
"""How much less CPU the job worker asks for than the agent, under contention.

Training may take every core; the agent must still heartbeat, answer approvals and move
parameters, or the orchestrator counts the silo as disconnected. On a machine that runs
nothing else the worker still gets all of the CPU. The agent's thread that computes
secure-aggregation masks ahead, work off a round's critical path, takes the same.
"""


def write_message(stream: IO[bytes], message: dict[str, Any]) -> None:
    """Write one message as a JSON line and flush."""
    stream.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    stream.flush()


def read_message(stream: IO[bytes]) -> dict[str, Any] | None:
    """Read one message; ``None`` at end of stream (the other side has gone)."""
    line = stream.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise ValueError("message over the size limit")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    return message


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Noop(_Message):
    """Answer with the worker's pid, doing nothing (the connectivity check)."""

    op: Literal["noop"] = "noop"


class Init(_Message):
    """Load the job's task code and set its runner up. ``workers`` ranks (and
    ``machines``, a step over several machines) start torch's launcher instead."""

    op: Literal["init"] = "init"
    code_dir: str
    entrypoint: str
    silo: str
    inputs: dict[str, str]
    work_dir: str
    hyperparameters: dict[str, Any]
    rounds: int = Field(default=1, ge=1)
    privacy: dict[str, Any] = Field(default_factory=dict)
    threads: int = Field(default=1, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    workers: int = Field(default=1, ge=1)
    machines: dict[str, Any] | None = None


class Prepare(_Message):
    """Preprocess (rank 0), then build the model; write its parameters to ``out``."""

    op: Literal["prepare"] = "prepare"
    out: str


class Preprocess(_Message):
    """Preprocess alone, on a compute of its own."""

    op: Literal["preprocess"] = "preprocess"


class Build(_Message):
    """Build the model alone, on the compute that trains it; write it to ``out``."""

    op: Literal["build"] = "build"
    out: str


class Fit(_Message):
    """Train ``round`` from the parameters at ``params`` (evaluating them first, with
    ``evaluate_first``); write the new parameters to ``out``."""

    op: Literal["fit"] = "fit"
    round: int = Field(ge=1)
    params: str
    out: str
    evaluate_first: bool = False
    config: dict[str, FiniteFloat] = Field(default_factory=dict)


class Evaluate(_Message):
    """Evaluate the parameters at ``params`` on this silo's data."""

    op: Literal["evaluate"] = "evaluate"
    round: int = Field(ge=0)
    params: str


class Shutdown(_Message):
    op: Literal["shutdown"] = "shutdown"


Command = Annotated[
    Noop | Init | Prepare | Preprocess | Build | Fit | Evaluate | Shutdown,
    Field(discriminator="op"),
]
_COMMAND: TypeAdapter[Noop | Init | Prepare | Preprocess | Build | Fit | Evaluate | Shutdown] = (
    TypeAdapter(Command)
)


class Reply(_Message):
    """What a command gave: the parameters' digest, the metrics, the worker's pid."""

    ok: Literal[True] = True
    digest: str | None = None
    train_metrics: dict[str, float] | None = None
    eval_metrics: dict[str, float] | None = None
    pid: int | None = None


class Failure(_Message):
    """A command that raised: its error, the class it claims, its traceback's tail."""

    ok: Literal[False] = False
    error: str = ""
    error_class: str | None = None
    traceback: str = ""


_REPLY: TypeAdapter[Reply | Failure] = TypeAdapter(
    Annotated[Reply | Failure, Field(discriminator="ok")]
)


def parse_command(
    message: dict[str, Any],
) -> Noop | Init | Prepare | Preprocess | Build | Fit | Evaluate | Shutdown:
    """A command read from the pipe; a ``ValidationError`` names what does not fit."""
    return _COMMAND.validate_python(message)


def parse_reply(message: dict[str, Any]) -> Reply | Failure:
    """A worker's answer; a ``ValidationError`` names what does not fit."""
    return _REPLY.validate_python(message)
