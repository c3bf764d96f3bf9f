"""Rows in time order: the chronological train/test split and windows of consecutive rows."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.datasets import Arrays, chronological_parts, sliding_windows
from fedsilo.errors import ConfigError


def _stream(times: list[float]) -> Arrays:
    n = len(times)
    return Arrays({"x": np.arange(n, dtype=np.float32), "time": np.array(times), "y": np.zeros(n)})


def test_the_latest_rows_are_the_test_part_and_nothing_is_lost() -> None:
    data = _stream([float(t) for t in range(100)])
    parts = chronological_parts(data, test_fraction=0.25)
    train, test = parts["train"].arrays["time"], parts["test"].arrays["time"]
    assert len(train) + len(test) == 100
    assert train.max() < test.min()  # every test row comes after every training row
    assert len(test) == 25
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # order is kept


def test_rows_of_the_same_time_stay_in_one_part() -> None:
    parts = chronological_parts(_stream([0, 1, 2, 3, 3, 3, 3, 4]), test_fraction=0.5)
    assert 3 not in set(parts["train"].arrays["time"]) or 3 not in set(parts["test"].arrays["time"])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_a_test_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        chronological_parts(_stream([0, 1, 2]), test_fraction=fraction)


def test_a_constant_time_column_cannot_be_split() -> None:
    with pytest.raises(ConfigError, match="too few distinct values"):
        chronological_parts(_stream([5.0] * 10), test_fraction=0.2)


def test_each_window_ends_at_its_row_and_holds_the_rows_before_it() -> None:
    windows = sliding_windows(6, 3)
    assert windows.shape == (6, 3)
    assert windows[5].tolist() == [3, 4, 5]
    assert windows[1].tolist() == [0, 0, 1]  # the first row stands in before the start
    assert (windows[:, -1] == np.arange(6)).all()
    assert sliding_windows(4, 1).tolist() == [[0], [1], [2], [3]]


def test_a_window_shorter_than_one_row_is_refused() -> None:
    with pytest.raises(ConfigError, match="length"):
        sliding_windows(5, 0)
