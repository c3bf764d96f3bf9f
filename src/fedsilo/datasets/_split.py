"""Splitting a dataset into per-silo shards, and writing them with a manifest.

:func:`split` takes a dataset's parts (``train``, ``test``...) and deals each part's rows to
the silos. The first part (``train``, else the only one) is dealt by the plan's scheme;
the other parts follow it: with ``column`` and ``time`` by the same rule (a silo's test
rows come from the population its training rows come from), with ``iid`` and
``dirichlet`` uniformly, so every silo evaluates on the same distribution. A dataset with
a single part can hold out a test fraction in each silo after the split (stratified by
label when it has labels).

:func:`write_shards` saves every silo's parts under ``OUT/SILO/ROLE.npz`` (or ``.txt``) and
writes ``OUT/split.json``: the plan and, per silo and part, the number of rows and of each
label, never the rows themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo._suggest import did_you_mean, listing
from fedsilo.datasets._partition import (
    ColumnRule,
    Partition,
    check_partition,
    column_rule,
    dirichlet_partition,
    iid_partition,
    time_rule,
)
from fedsilo.datasets._records import Shardable
from fedsilo.errors import ConfigError

__all__ = [
    "MANIFEST",
    "Scheme",
    "Shards",
    "SplitPlan",
    "parse_plan",
    "split",
    "write_shards",
]

Array = np.ndarray[Any, Any]
MANIFEST = "split.json"
"""The manifest :func:`write_shards` writes beside the shards."""


class Scheme(StrEnum):
    """How the rows of a dataset are dealt to the silos."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    COLUMN = "column"
    TIME = "time"


@dataclass(frozen=True)
class SplitPlan:
    """What :func:`split` does: the scheme, its settings, the seed, and subsetting.

    ``column`` names the column for ``column`` and ``time`` (default ``time`` for the
    latter); ``edges`` gives explicit band or period boundaries. ``limits`` caps a part's
    rows (role to at most how many, drawn at random before the split: reduced-size runs).
    ``test_fraction`` holds out that share of each silo's rows as ``test`` when the
    dataset has a single part.
    """

    scheme: Scheme = Scheme.IID
    seed: int = 0
    alpha: float = 0.5
    column: str | None = None
    edges: tuple[float, ...] | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    test_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(
                f"test_fraction must be in [0, 1), not {self.test_fraction}", field="test_fraction"
            )
        for role, limit in self.limits.items():
            if limit < 1:
                raise ConfigError(f"the limit of '{role}' must be >= 1, not {limit}", field="limit")

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-ready settings, for the manifest."""
        out: dict[str, Any] = {"scheme": self.scheme.value, "seed": self.seed}
        if self.scheme is Scheme.DIRICHLET:
            out["alpha"] = self.alpha
        if self.scheme in (Scheme.COLUMN, Scheme.TIME):
            out["column"] = self.split_column()
        if self.edges is not None:
            out["edges"] = list(self.edges)
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.test_fraction:
            out["test_fraction"] = self.test_fraction
        return out

    def split_column(self) -> str:
        """The column the ``column`` and ``time`` schemes split by."""
        if self.column is not None:
            return self.column
        if self.scheme is Scheme.TIME:
            return "time"
        raise ConfigError("the 'column' scheme needs the column to split by", field="column")


def parse_plan(
    base: SplitPlan | None = None,
    *,
    scheme: str | None = None,
    seed: int | None = None,
    alpha: float | None = None,
    column: str | None = None,
    edges: str | None = None,
    limits: Sequence[str] = (),
    test_fraction: float | None = None,
) -> SplitPlan:
    """``base`` (default: IID, seed 0) with the settings given as text on a command line.

    ``edges`` is ``E1,E2,...``; each of ``limits`` is ``ROLE=ROWS``. Settings left at None
    keep ``base``'s.
    """
    changes: dict[str, Any] = {}
    if scheme is not None:
        try:
            changes["scheme"] = Scheme(scheme)
        except ValueError:
            schemes = [s.value for s in Scheme]
            raise ConfigError(
                f"unknown scheme '{scheme}'{did_you_mean(scheme, schemes)}; the schemes are: "
                f"{listing(schemes)}",
                field="scheme",
            ) from None
    for name, value in (
        ("seed", seed),
        ("alpha", alpha),
        ("column", column),
        ("test_fraction", test_fraction),
    ):
        if value is not None:
            changes[name] = value
    if edges is not None:
        try:
            changes["edges"] = tuple(float(e) for e in edges.split(","))
        except ValueError:
            raise ConfigError(
                f"edges are numbers E1,E2,..., not {edges!r}", field="edges"
            ) from None
    if limits:
        parsed: dict[str, int] = {}
        for text in limits:
            role, sep, rows = text.partition("=")
            if not sep or not role.strip() or not rows.strip().isdigit():
                raise ConfigError(f"a limit is ROLE=ROWS (train=3000), not {text!r}", field="limit")
            parsed[role.strip()] = int(rows)
        changes["limits"] = parsed
    return replace(base or SplitPlan(), **changes)


@dataclass(frozen=True)
class Shards:
    """Every silo's parts after a split; ``groups`` says what each silo holds (by column)."""

    silos: tuple[str, ...]
    parts: Mapping[str, Mapping[str, Shardable]]
    plan: SplitPlan
    groups: tuple[str, ...] | None = None

    def rows(self, silo: str, role: str) -> int:
        """How many rows of part ``role`` silo ``silo`` holds."""
        return len(self.parts[silo][role])


def _subset(data: Shardable, limit: int | None, seed: int) -> Shardable:
    if limit is None or limit >= len(data):
        return data
    chosen = np.sort(np.random.default_rng(seed).permutation(len(data))[:limit])
    return data.take(chosen)


def _holdout(data: Shardable, fraction: float, seed: int) -> tuple[Array, Array]:
    """Indices of (train, test) rows: ``fraction`` of each label's rows go to test."""
    rng = np.random.default_rng(seed)
    labels = data.labels()
    groups = (
        [np.arange(len(data))]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    train, test = [], []
    for rows in groups:
        shuffled = rng.permutation(rows)
        cut = round(len(rows) * fraction)
        test.append(shuffled[:cut])
        train.append(shuffled[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split(
    parts: Mapping[str, Shardable], silos: Sequence[str], plan: SplitPlan | None = None
) -> Shards:
    """Deal every part of a dataset to ``silos`` (in order) by ``plan``; see the module."""
    plan = plan or SplitPlan()
    silos = tuple(silos)
    if not parts:
        raise ConfigError("nothing to split: the dataset has no parts")
    if len(set(silos)) != len(silos):
        raise ConfigError(f"silo names must be distinct: {', '.join(silos)}", field="silos")
    unknown = sorted(set(plan.limits) - set(parts))
    if unknown:
        named = ", ".join(f"'{p}'{did_you_mean(p, parts)}" for p in unknown)
        raise ConfigError(
            f"limit given for part(s) {named}; the dataset's parts are {listing(parts)}",
            field="limit",
        )
    if plan.test_fraction and len(parts) > 1:
        raise ConfigError(
            f"test_fraction is for a dataset with one part; this one has {', '.join(parts)}",
            field="test_fraction",
        )
    data = {
        role: _subset(part, plan.limits.get(role), plan.seed + i)
        for i, (role, part) in enumerate(parts.items())
    }
    primary = "train" if "train" in data else next(iter(data))
    k = len(silos)
    rule: ColumnRule | None = None
    if plan.scheme is Scheme.COLUMN:
        rule = column_rule(data[primary].column(plan.split_column()), k, edges=plan.edges)
    elif plan.scheme is Scheme.TIME:
        rule = time_rule(data[primary].column(plan.split_column()), k, edges=plan.edges)

    out: dict[str, dict[str, Shardable]] = {silo: {} for silo in silos}
    for i, (role, part) in enumerate(data.items()):
        partition: Partition
        if rule is not None:
            partition = rule.partition(part.column(plan.split_column()))
        elif plan.scheme is Scheme.DIRICHLET and role == primary:
            labels = part.labels()
            if labels is None:
                raise ConfigError(
                    f"the 'dirichlet' scheme needs class labels, and part '{role}' has none",
                    field="scheme",
                )
            partition = dirichlet_partition(labels, k, alpha=plan.alpha, seed=plan.seed)
        else:
            partition = iid_partition(len(part), k, seed=plan.seed + 1000 + i)
        check_partition(partition, len(part))
        for silo, index in zip(silos, partition, strict=True):
            out[silo][role] = part.take(index)
    if plan.test_fraction:
        for j, silo in enumerate(silos):
            whole = out[silo].pop(primary)
            train, test = _holdout(whole, plan.test_fraction, plan.seed + 2000 + j)
            out[silo] = {"train": whole.take(train), "test": whole.take(test)}
    groups = tuple(rule.labels) if rule is not None else None
    return Shards(silos=silos, parts=out, plan=plan, groups=groups)


def _label_counts(data: Shardable) -> dict[str, int]:
    labels = data.labels()
    if labels is None:
        return {}
    values, counts = np.unique(labels, return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def write_shards(shards: Shards, out_dir: Path, *, source: str) -> dict[str, dict[str, Path]]:
    """Save each silo's parts as ``out_dir/SILO/ROLE.SUFFIX`` and the manifest; return paths.

    ``source`` names where the rows came from, for the manifest.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, dict[str, Path]] = {}
    manifest: dict[str, Any] = {"source": source, **shards.plan.describe(), "silos": {}}
    for i, silo in enumerate(shards.silos):
        paths[silo] = {}
        entry: dict[str, Any] = {}
        if shards.groups is not None:
            entry["holds"] = shards.groups[i]
        for role, data in shards.parts[silo].items():
            paths[silo][role] = data.save(out_dir / silo / f"{role}{data.suffix}")
            entry[role] = {"rows": len(data), "labels": _label_counts(data)}
        manifest["silos"][silo] = entry
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return paths
