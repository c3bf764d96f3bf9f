"""An FL job's rounds, decided in one place: :class:`RoundEngine`, a state machine that
performs no I/O, and the messages a driver exchanges with it."""

from fedsilo.rounds._engine import (
    CENTRAL,
    Answer,
    EngineState,
    Finished,
    Left,
    Metric,
    Missed,
    Phase,
    QuorumLost,
    RoundClosed,
    RoundEngine,
    SetupDone,
    Task,
)

__all__ = [
    "CENTRAL",
    "Answer",
    "EngineState",
    "Finished",
    "Left",
    "Metric",
    "Missed",
    "Phase",
    "QuorumLost",
    "RoundClosed",
    "RoundEngine",
    "SetupDone",
    "Task",
]
