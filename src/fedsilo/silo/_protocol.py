"""Messages between a silo agent and its job worker: JSON lines over a pipe, never pickle."""

from __future__ import annotations

import json
from typing import IO, Any

__all__ = ["NICENESS", "read_message", "write_message"]

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
