"""Partitioners: deal the rows of a dataset out to silos, each row to exactly one silo.

Every partitioner returns a :data:`Partition`, one array of row indices per silo, sorted,
which together hold every row exactly once: nothing is dropped or duplicated. Those that
draw at random take a ``seed`` and give the same partition for the same seed, on any
machine (numpy's PCG64 generator).

* :func:`iid_partition`: a uniform random deal, silo sizes within one row of each other.
* :func:`dirichlet_partition`: label skew. Each class is shared among the silos in
  proportions drawn from Dirichlet(alpha): small alpha gives each silo a few classes,
  large alpha approaches IID (Hsu et al. 2019).
* :func:`column_partition`: by an attribute, the way organisations differ (a bank per
  region, a hospital per site): one silo per distinct value, or bands of a number.
* :func:`time_partition`: by time, each silo a contiguous period.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsilo.errors import ConfigError

__all__ = [
    "ColumnRule",
    "Partition",
    "check_partition",
    "column_partition",
    "column_rule",
    "dirichlet_partition",
    "iid_partition",
    "time_partition",
    "time_rule",
]

Array = np.ndarray[Any, Any]
Partition = tuple[Array, ...]
"""One sorted int64 array of row indices per silo."""

_DIRICHLET_ATTEMPTS = 100


def _check_silos(num_silos: int, rows: int) -> None:
    if num_silos < 1:
        raise ConfigError(f"a partition needs at least one silo, not {num_silos}", field="silos")
    if rows < num_silos:
        raise ConfigError(
            f"cannot deal {rows} rows to {num_silos} silos: each silo needs at least one row",
            field="silos",
        )


def _finish(parts: Sequence[Array]) -> Partition:
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)


def check_partition(partition: Partition, rows: int) -> None:
    """Raise unless ``partition`` holds each of ``rows`` rows exactly once."""
    if not partition:
        raise ConfigError("a partition needs at least one silo")
    merged = np.concatenate(partition) if partition else np.empty(0, np.int64)
    if len(merged) != rows or not np.array_equal(np.sort(merged), np.arange(rows)):
        raise ConfigError(
            f"the partition holds {len(merged)} indices for {rows} rows; every row must go "
            "to exactly one silo"
        )


def iid_partition(rows: int, num_silos: int, *, seed: int) -> Partition:
    """A uniform random deal of ``rows`` rows: sizes differ by at most one."""
    _check_silos(num_silos, rows)
    order = np.random.default_rng(seed).permutation(rows)
    return _finish(np.array_split(order, num_silos))


def dirichlet_partition(
    labels: Array, num_silos: int, *, alpha: float, seed: int, min_rows: int = 1
) -> Partition:
    """Label skew: each class's rows go to the silos in Dirichlet(``alpha``) proportions.

    Draws are repeated (from the same seeded generator) until every silo holds at least
    ``min_rows`` rows; a :class:`ConfigError` says when ``alpha`` is too small for that.
    """
    if not alpha > 0:
        raise ConfigError(f"alpha must be > 0, not {alpha}", field="alpha")
    labels = np.asarray(labels).reshape(-1)
    _check_silos(num_silos, len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(_DIRICHLET_ATTEMPTS):
        parts: list[list[Array]] = [[] for _ in range(num_silos)]
        for rows in members:
            shuffled = rng.permutation(rows)
            shares = rng.dirichlet(np.full(num_silos, float(alpha)))
            cuts = np.round(np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            for silo, piece in enumerate(np.split(shuffled, cuts)):
                parts[silo].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_rows:
            return _finish(merged)
    raise ConfigError(
        f"Dirichlet(alpha={alpha}) left a silo with fewer than {min_rows} rows in "
        f"{_DIRICHLET_ATTEMPTS} draws over {len(labels)} rows and {num_silos} silos; "
        "use a larger alpha or fewer silos",
        field="alpha",
    )


@dataclass(frozen=True)
class ColumnRule:
    """Which silo a value of a column goes to: bands of a number, or a value per silo.

    Built from one part of a dataset (its training rows) by :func:`column_rule` or
    :func:`time_rule`, and applied as it stands to the other parts (test rows), so that a
    silo's test rows come from the same population as its training rows.
    """

    num_silos: int
    cuts: tuple[float, ...] | None = None
    owners: dict[str, int] | None = None

    @property
    def labels(self) -> list[str]:
        """What each silo holds, as text: ``[lo, hi)`` bands or the values."""
        if self.cuts is not None:
            bounds = ["-inf", *(f"{c:g}" for c in self.cuts), "inf"]
            return [f"[{bounds[i]}, {bounds[i + 1]})" for i in range(self.num_silos)]
        assert self.owners is not None
        groups: list[list[str]] = [[] for _ in range(self.num_silos)]
        for value, silo in self.owners.items():
            groups[silo].append(value)
        return [",".join(sorted(g)) for g in groups]

    def assign(self, values: Array) -> Array:
        """The silo (0-based) of each value; an unseen value is an error."""
        values = np.asarray(values).reshape(-1)
        if self.cuts is not None:
            return np.searchsorted(np.asarray(self.cuts), values, side="right")
        assert self.owners is not None
        keys = values.astype(str)
        unseen = sorted(set(np.unique(keys)) - set(self.owners))
        if unseen:
            raise ConfigError(
                f"value(s) {', '.join(unseen[:5])} of the column are not in the rows the "
                "split was built from, so they belong to no silo",
                field="column",
            )
        return np.array([self.owners[k] for k in keys], dtype=np.int64)

    def partition(self, values: Array) -> Partition:
        """Each row to the silo of its value; an empty silo is an error."""
        values = np.asarray(values).reshape(-1)
        _check_silos(self.num_silos, len(values))
        assign = self.assign(values)
        parts = [np.flatnonzero(assign == silo) for silo in range(self.num_silos)]
        empty = [str(i + 1) for i, p in enumerate(parts) if len(p) == 0]
        if empty:
            raise ConfigError(
                f"silo(s) number {', '.join(empty)} would hold no rows; choose other edges "
                "or fewer silos",
                field="edges",
            )
        return _finish(parts)


def _explicit_cuts(edges: Sequence[float], num_silos: int) -> tuple[float, ...]:
    cuts = tuple(float(e) for e in edges)
    if len(cuts) != num_silos - 1 or any(b <= a for a, b in itertools.pairwise(cuts)):
        raise ConfigError(
            f"give {num_silos - 1} ascending edges for {num_silos} silos, not {list(edges)}",
            field="edges",
        )
    return cuts


def column_rule(
    values: Array, num_silos: int, *, edges: Sequence[float] | None = None
) -> ColumnRule:
    """The rule of :func:`column_partition` for these values (see there)."""
    values = np.asarray(values).reshape(-1)
    _check_silos(num_silos, len(values))
    numeric = np.issubdtype(values.dtype, np.number)
    if edges is not None:
        if not numeric:
            raise ConfigError("edges need a numeric column", field="edges")
        return ColumnRule(num_silos, cuts=_explicit_cuts(edges, num_silos))
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) < num_silos:
        raise ConfigError(
            f"the column has {len(distinct)} distinct values, fewer than the {num_silos} silos",
            field="column",
        )
    if len(distinct) == num_silos:
        return ColumnRule(num_silos, owners={str(v): i for i, v in enumerate(distinct)})
    if numeric:
        positions = np.cumsum(counts)
        targets = np.arange(1, num_silos) * len(values) / num_silos
        # each band ends after the first distinct value whose running count reaches its target
        cut_at = np.unique(np.clip(np.searchsorted(positions, targets), 0, len(distinct) - 2))
        if len(cut_at) != num_silos - 1:
            raise ConfigError(
                f"the column's values are too concentrated to make {num_silos} bands; "
                "give explicit edges",
                field="column",
            )
        cuts = (distinct[cut_at].astype(np.float64) + distinct[cut_at + 1]) / 2.0
        return ColumnRule(num_silos, cuts=tuple(float(c) for c in cuts))
    loads = np.zeros(num_silos, dtype=np.int64)
    owners: dict[str, int] = {}
    for index in np.argsort(-counts, kind="stable"):
        silo = int(np.argmin(loads))
        owners[str(distinct[index])] = silo
        loads[silo] += counts[index]
    return ColumnRule(num_silos, owners=owners)


def column_partition(
    values: Array, num_silos: int, *, edges: Sequence[float] | None = None
) -> Partition:
    """By an attribute, the way organisations differ (a region, a site, an amount band).

    * ``edges`` given (numbers, ascending, ``num_silos - 1`` of them): silo i holds the
      rows with ``edges[i-1] <= value < edges[i]``.
    * exactly ``num_silos`` distinct values: one silo per value, in sorted order.
    * more distinct numbers than silos: bands at the quantiles, so the silos are about
      equal in size; equal values always share a silo.
    * more distinct non-numbers: whole values dealt to the silos, largest first, each to
      the silo holding the fewest rows so far.

    Fewer distinct values than silos is an error: a silo would be empty.
    """
    return column_rule(values, num_silos, edges=edges).partition(values)


def time_rule(times: Array, num_silos: int, *, edges: Sequence[float] | None = None) -> ColumnRule:
    """The rule of :func:`time_partition` for these times (see there)."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    _check_silos(num_silos, len(times))
    if edges is not None:
        return ColumnRule(num_silos, cuts=_explicit_cuts(edges, num_silos))
    ordered = np.sort(times, kind="stable")
    starts = [len(c) for c in np.array_split(ordered, num_silos)]
    boundaries = np.cumsum(starts)[:-1]
    return ColumnRule(num_silos, cuts=tuple(float(ordered[b]) for b in boundaries))


def time_partition(
    times: Array, num_silos: int, *, edges: Sequence[float] | None = None
) -> Partition:
    """By time: each silo a contiguous period, the first silo the earliest.

    Without ``edges`` the periods hold about equal numbers of rows (rows of the same time
    stay together, in the later period); with them, silo i holds
    ``edges[i-1] <= time < edges[i]``.
    """
    return time_rule(times, num_silos, edges=edges).partition(times)
