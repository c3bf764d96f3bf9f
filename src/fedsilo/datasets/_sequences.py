"""Rows in time order: a train/test split by time, and windows of consecutive rows.

Transactions are scored as they happen, so a fraud model is tested on what comes after
the data it learnt from: :func:`chronological_parts` holds out the latest rows as the test
part. :func:`sliding_windows` gives, for each row of a silo's stream, the indices of the
rows just before it, for sequence models (an LSTM over a bank's recent transactions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.datasets._loaders import load_creditcard
from fedsilo.datasets._records import Arrays
from fedsilo.errors import ConfigError

__all__ = ["chronological_parts", "load_creditcard_by_time", "sliding_windows"]

Array = np.ndarray[Any, Any]
CREDITCARD_TEST_FRACTION = 0.2


def chronological_parts(
    data: Arrays, *, column: str = "time", test_fraction: float = 0.2
) -> dict[str, Arrays]:
    """``train``: the earliest rows by ``column``; ``test``: the latest ``test_fraction``.

    Rows keep their order within each part, and rows of the same time stay in one part.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction must be in (0, 1), not {test_fraction}", field="test_fraction"
        )
    times = np.asarray(data.column(column), dtype=np.float64)
    cut = float(np.quantile(times, 1.0 - test_fraction))
    train, test = np.flatnonzero(times < cut), np.flatnonzero(times >= cut)
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(
            f"column '{column}' has too few distinct values to hold out the latest "
            f"{test_fraction:g} of the rows",
            field="column",
        )
    return {"train": data.take(train), "test": data.take(test)}


def load_creditcard_by_time(root: Path | str | None = None) -> dict[str, Arrays]:
    """The ULB transactions as ``train`` (the first 80 % in time) and ``test`` (the rest).

    The cut falls on the second day, near 16:20 counted from the first transaction:
    227,845 transactions (417 frauds) before it, 56,962 (75 frauds) after.
    """
    return chronological_parts(load_creditcard(root), test_fraction=CREDITCARD_TEST_FRACTION)


def sliding_windows(rows: int, length: int) -> Array:
    """Indices (``rows`` x ``length``) of each row's window: the rows before it, then itself.

    Row ``i``'s window is ``i - length + 1, ..., i``; before the first row, the first row
    stands in (index 0 repeated), so every row has a full window.
    """
    if length < 1:
        raise ConfigError(f"a window needs a length >= 1, not {length}", field="window")
    if rows < 0:
        raise ConfigError(f"cannot window {rows} rows", field="rows")
    offsets = np.arange(1 - length, 1, dtype=np.int64)
    windows: Array = np.maximum(np.arange(rows, dtype=np.int64)[:, None] + offsets[None, :], 0)
    return windows
