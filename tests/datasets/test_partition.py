"""Partitioners: every row to exactly one silo, the same deal for the same seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedsilo.datasets import (
    check_partition,
    column_partition,
    column_rule,
    dirichlet_partition,
    iid_partition,
    time_partition,
)
from fedsilo.errors import ConfigError


def _assert_exact_cover(partition: tuple[np.ndarray, ...], rows: int) -> None:
    check_partition(partition, rows)
    merged = np.concatenate(partition)
    assert len(merged) == rows and len(np.unique(merged)) == rows


@pytest.mark.parametrize(("rows", "silos"), [(10, 3), (1000, 7), (5, 5)])
def test_iid_covers_every_row_once_in_near_equal_shares(rows: int, silos: int) -> None:
    partition = iid_partition(rows, silos, seed=3)
    _assert_exact_cover(partition, rows)
    sizes = [len(p) for p in partition]
    assert max(sizes) - min(sizes) <= 1
    assert all(
        np.array_equal(a, b)
        for a, b in zip(partition, iid_partition(rows, silos, seed=3), strict=True)
    )
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(partition, iid_partition(rows, silos, seed=4), strict=True)
    )


def test_check_partition_finds_dropped_and_duplicated_rows() -> None:
    with pytest.raises(ConfigError, match="exactly one silo"):
        check_partition((np.array([0, 1]), np.array([1, 2])), 4)
    with pytest.raises(ConfigError, match="exactly one silo"):
        check_partition((np.array([0]), np.array([2])), 3)


def test_dirichlet_skews_labels_more_for_smaller_alpha() -> None:
    labels = np.repeat(np.arange(10), 300)

    def skew(alpha: float) -> float:
        partition = dirichlet_partition(labels, 5, alpha=alpha, seed=0)
        _assert_exact_cover(partition, len(labels))
        # mean over silos of the share of the silo's rows in its most common class
        return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in partition]))

    assert skew(0.1) > skew(0.5) > skew(100.0)
    assert skew(100.0) < 0.2  # close to IID: about one tenth per class


def test_dirichlet_is_deterministic_and_checks_alpha() -> None:
    labels = np.arange(200) % 4
    a = dirichlet_partition(labels, 3, alpha=0.5, seed=11)
    b = dirichlet_partition(labels, 3, alpha=0.5, seed=11)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        dirichlet_partition(labels, 3, alpha=0, seed=0)
    with pytest.raises(ConfigError, match="larger alpha or fewer silos"):
        dirichlet_partition(np.zeros(12), 6, alpha=0.01, seed=0, min_rows=2)


def test_column_one_silo_per_distinct_value() -> None:
    values = np.array(["north", "south", "north", "east", "south", "east", "east"])
    partition = column_partition(values, 3)
    _assert_exact_cover(partition, len(values))
    assert [sorted(set(values[p])) for p in partition] == [["east"], ["north"], ["south"]]


def test_column_numeric_quantile_bands_keep_equal_values_together() -> None:
    values = np.array([1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 10)
    partition = column_partition(values, 3)
    _assert_exact_cover(partition, len(values))
    maxima = [values[p].max() for p in partition]
    minima = [values[p].min() for p in partition]
    assert maxima[0] < minima[1] and maxima[1] < minima[2]  # bands, no value split
    assert all(len(p) >= 20 for p in partition)


def test_column_explicit_edges_and_categorical_grouping() -> None:
    amounts = np.array([1.0, 5.0, 20.0, 99.0, 150.0, 1000.0])
    partition = column_partition(amounts, 3, edges=[10, 100])
    assert [amounts[p].tolist() for p in partition] == [[1.0, 5.0], [20.0, 99.0], [150.0, 1000.0]]
    with pytest.raises(ConfigError, match="give 2 ascending edges"):
        column_partition(amounts, 3, edges=[100, 10])
    sites = np.array(["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2)
    rule = column_rule(sites, 2)
    grouped = rule.partition(sites)
    _assert_exact_cover(grouped, len(sites))
    assert sorted(len(p) for p in grouped) == [7, 7]
    assert sorted(rule.labels) == ["a,d", "b,c"]
    with pytest.raises(ConfigError, match="not in the rows the split was built from"):
        rule.partition(np.array(["a", "z"]))


def test_column_with_too_few_values_is_refused() -> None:
    with pytest.raises(ConfigError, match="fewer than the 3 silos"):
        column_partition(np.array([0, 1, 0, 1]), 3)


def test_time_gives_contiguous_periods() -> None:
    times = np.random.default_rng(0).uniform(0, 1000, 101)
    partition = time_partition(times, 4)
    _assert_exact_cover(partition, len(times))
    for earlier, later in itertools.pairwise(partition):
        assert times[earlier].max() < times[later].min()
    assert max(len(p) for p in partition) - min(len(p) for p in partition) <= 1
    by_edges = time_partition(times, 2, edges=[500.0])
    assert (times[by_edges[0]] < 500).all() and (times[by_edges[1]] >= 500).all()


def test_more_silos_than_rows_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot deal 2 rows to 3 silos"):
        iid_partition(2, 3, seed=0)
