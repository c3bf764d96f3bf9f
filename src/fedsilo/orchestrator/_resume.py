"""What a job needs to go on after the orchestrator restarts: its state at a closed round.

At every closed round the orchestrator writes a checkpoint beside the round's record: the
global model's digest, and the strategy's state (a server optimizer's moments as a
safetensors blob, central DP's accounting as JSON). A job the orchestrator finds running
when it starts goes on from its last checkpoint: the round in flight is redone, with the
same seeds, so the model is the one an uninterrupted run makes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError, FedsiloError
from fedsilo.privacy import CentralDP
from fedsilo.strategies import FedOpt, Strategy

__all__ = ["CannotResume", "restore_strategy", "strategy_state"]

Arrays = dict[str, npt.NDArray[Any]]
_FORMAT = 1


class CannotResume(FedsiloError):
    """A job's saved state cannot be read back; the job is failed, saying why."""


def strategy_state(strategy: Strategy) -> tuple[Arrays, dict[str, Any]]:
    """The arrays and the JSON-ready state that :func:`restore_strategy` takes back."""
    arrays: Arrays = {}
    meta: dict[str, Any] = {"format": _FORMAT}
    inner: Strategy = strategy
    if isinstance(strategy, CentralDP):
        meta["central_dp"] = strategy.state_dict()
        inner = strategy.inner
    if isinstance(inner, FedOpt):
        arrays = inner.state_arrays()
    return arrays, meta


def restore_strategy(strategy: Strategy, arrays: Mapping[str, np.ndarray], state_json: str) -> None:
    """Put back into a newly built ``strategy`` what :func:`strategy_state` saved."""
    try:
        meta = json.loads(state_json)
    except ValueError as exc:
        raise CannotResume(f"the saved strategy state is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CannotResume(
            "the saved strategy state was written by another version of fedsilo "
            f"(format {meta.get('format') if isinstance(meta, dict) else '?'})"
        )
    inner: Strategy = strategy
    if isinstance(strategy, CentralDP):
        saved = meta.get("central_dp")
        if not isinstance(saved, dict):
            raise CannotResume("the job runs central DP, but its accounting was not saved")
        strategy.load_state_dict(saved)
        inner = strategy.inner
    if isinstance(inner, FedOpt):
        try:
            inner.load_state_arrays(arrays)
        except AggregationError as exc:
            raise CannotResume(str(exc)) from None
    elif arrays:
        raise CannotResume("the saved state holds a server optimizer's moments; the job has none")
