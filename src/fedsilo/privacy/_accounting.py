"""Privacy accounting shared by local and central DP: epsilon from a history, and quiet Opacus.

An accountant's whole state is its *history*: a list of ``(noise_multiplier, sample_rate,
steps)`` entries. Keeping that list (and persisting it as JSON) is what lets a silo's budget
last across rounds and across worker processes; epsilon is always recomputed from the full
history, never summed per round (composition is not additive in epsilon).

Opacus emits a few warnings that are expected in fedsilo's use of it and carry no action
for anyone; :func:`silence_opacus_warnings` ignores exactly those, by message, inside a
``warnings.catch_warnings`` block, so every other warning still surfaces (and still fails
tests that run with ``filterwarnings = error``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "HistoryEntry",
    "epsilon_of",
    "history_from_json",
    "history_to_json",
    "silence_opacus_warnings",
]

HistoryEntry = tuple[float, float, int]
"""One accountant history entry: ``(noise_multiplier, sample_rate, steps)``."""

_MECHANISMS = ("rdp", "prv")

# Only these, by message: each is expected and harmless where fedsilo runs Opacus.
_HARMLESS = (
    # secure_mode needs torchcsprng, which cannot be installed; fedsilo seeds the noise
    # generator from the OS's secure source instead (see docs/security.md).
    r"Secure RNG turned off",
    # RDP conversion picked the largest order: the bound is valid, only possibly loose.
    r"Optimal order is the largest alpha",
    # Opacus's per-sample-gradient hooks on a first layer whose input needs no gradient.
    r"Full backward hook is firing when gradients are computed with respect to module outputs",
    # A task builds a new DataLoader (and dataset object) each round over the silo's one
    # logical dataset; the budget check in LocalDP covers a change of sample rate.
    r"PrivacyEngine detected new dataset object",
)


@contextmanager
def silence_opacus_warnings() -> Iterator[None]:
    """Ignore Opacus's known, harmless warnings (and only those) inside the block.

    The silo runner wraps a task's ``train()`` in this when local DP is on: the
    backward-hook note fires inside the data scientist's own training loop.
    """
    with warnings.catch_warnings():
        for message in _HARMLESS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


def epsilon_of(mechanism: str, history: Sequence[HistoryEntry], delta: float) -> float:
    """The epsilon that ``history`` spends at ``delta`` under ``mechanism`` (rdp or prv).

    An empty history has spent nothing (0.0); a step without noise spends everything
    (``math.inf``), which Opacus's accountants do not all report cleanly.
    """
    if mechanism not in _MECHANISMS:
        raise ValueError(f"unknown accountant {mechanism!r}; use one of {_MECHANISMS}")
    entries = [entry for entry in history if entry[2] > 0 and entry[1] > 0]
    if not entries:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in entries):
        return math.inf
    # Opacus (and torch with it) loads on the first epsilon asked for, not with fedsilo:
    # the processes that only read privacy settings stay light.
    from opacus.accountants import create_accountant  # type: ignore[import-untyped]

    accountant: Any = create_accountant(mechanism=mechanism)
    accountant.history = list(entries)
    with silence_opacus_warnings():
        return float(accountant.get_epsilon(delta=delta))


def history_to_json(history: Sequence[HistoryEntry]) -> list[list[float | int]]:
    """An accountant history as plain JSON lists."""
    return [[float(sigma), float(rate), int(steps)] for sigma, rate, steps in history]


def history_from_json(raw: object) -> list[HistoryEntry]:
    """Parse :func:`history_to_json`'s output back; a malformed history is a ``ValueError``.

    Entries come back as tuples, which Opacus's accountants need to merge a new step into
    the last entry.
    """
    if not isinstance(raw, list):
        raise ValueError("an accountant history must be a list of [noise, rate, steps]")
    out: list[HistoryEntry] = []
    for entry in raw:
        if (
            not isinstance(entry, list | tuple)
            or len(entry) != 3
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in entry)
            or float(entry[2]) != int(entry[2])
        ):
            raise ValueError(f"malformed accountant history entry {entry!r}")
        sigma, rate, steps = float(entry[0]), float(entry[1]), int(entry[2])
        if sigma < 0 or not 0 < rate <= 1 or steps < 0:
            raise ValueError(f"accountant history entry out of range: {entry!r}")
        out.append((sigma, rate, steps))
    return out
