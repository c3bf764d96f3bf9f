"""Splitting a dataset's parts into per-silo shards, and the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsilo.datasets import (
    Arrays,
    Scheme,
    Sentence,
    Sentences,
    SplitPlan,
    parse_plan,
    split,
    write_shards,
)
from fedsilo.errors import ConfigError

SILOS = ("silo-a", "silo-b", "silo-c")


def _images(n: int, seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    return Arrays(
        {"x": rng.integers(0, 255, (n, 4, 4)).astype(np.uint8), "y": np.arange(n) % 5}, "y"
    )


def _rows_of(shards_part: list[Arrays]) -> np.ndarray:
    return np.sort(np.concatenate([p.arrays["x"].reshape(len(p), -1)[:, 0] for p in shards_part]))


def test_every_part_is_dealt_whole() -> None:
    parts = {"train": _images(300), "test": _images(60, seed=1)}
    shards = split(parts, SILOS, SplitPlan(scheme=Scheme.DIRICHLET, alpha=0.3, seed=2))
    for role, part in parts.items():
        dealt = [shards.parts[s][role] for s in SILOS]  # type: ignore[misc]
        assert sum(len(d) for d in dealt) == len(part)
        assert np.array_equal(
            _rows_of(dealt), np.sort(part.arrays["x"].reshape(len(part), -1)[:, 0])
        )
    # training rows are skewed; test rows are dealt uniformly
    test_sizes = [shards.rows(s, "test") for s in SILOS]
    assert max(test_sizes) - min(test_sizes) <= 1


def test_limits_subset_a_part_before_the_split() -> None:
    shards = split(
        {"train": _images(300), "test": _images(50)}, SILOS, SplitPlan(limits={"train": 90})
    )
    assert sum(shards.rows(s, "train") for s in SILOS) == 90
    assert sum(shards.rows(s, "test") for s in SILOS) == 50
    with pytest.raises(ConfigError, match="limit given for part"):
        split({"train": _images(30)}, SILOS, SplitPlan(limits={"val": 3}))


def test_one_part_with_a_stratified_holdout() -> None:
    data = Arrays({"x": np.arange(1000.0), "y": (np.arange(1000) % 10 == 0).astype(np.int64)}, "y")
    shards = split({"all": data}, SILOS, SplitPlan(test_fraction=0.2, seed=5))
    for silo in SILOS:
        assert set(shards.parts[silo]) == {"train", "test"}
        test = shards.parts[silo]["test"]
        share = len(test) / (len(test) + shards.rows(silo, "train"))
        assert share == pytest.approx(0.2, abs=0.01)
        train = shards.parts[silo]["train"]
        positives = int(test.labels().sum()) + int(train.labels().sum())  # type: ignore[union-attr]
        assert int(test.labels().sum()) == round(0.2 * positives)  # type: ignore[union-attr]
    everything = np.concatenate(
        [shards.parts[s][r].arrays["x"] for s in SILOS for r in ("train", "test")]  # type: ignore[attr-defined]
    )
    assert np.array_equal(np.sort(everything), np.arange(1000.0))


def test_column_scheme_applies_the_training_rule_to_test_rows() -> None:
    def table(n: int, seed: int) -> Arrays:
        rng = np.random.default_rng(seed)
        return Arrays({"amount": rng.uniform(0, 300, n), "y": np.zeros(n, np.int64)}, "y")

    shards = split(
        {"train": table(600, 0), "test": table(200, 1)},
        SILOS,
        SplitPlan(scheme=Scheme.COLUMN, column="amount", edges=(50.0, 150.0)),
    )
    assert shards.groups == ("[-inf, 50)", "[50, 150)", "[150, inf)")
    for silo, (low, high) in zip(SILOS, ((0, 50), (50, 150), (150, 300)), strict=True):
        for role in ("train", "test"):
            amounts = shards.parts[silo][role].column("amount")
            assert ((amounts >= low) & (amounts < high)).all()


def test_sentences_split_by_column_and_saved_as_text(tmp_path: Path) -> None:
    sentences = Sentences([Sentence(("w",) * n, ("O",) * n) for n in (1, 2, 3, 4, 5, 6)])
    shards = split({"all": sentences}, SILOS[:2], SplitPlan(scheme=Scheme.COLUMN, column="length"))
    assert [shards.parts[s]["all"].column("length").tolist() for s in SILOS[:2]] == [
        [1, 2, 3],
        [4, 5, 6],
    ]
    paths = write_shards(shards, tmp_path, source="t")
    assert paths["silo-a"]["all"].read_text().count("\t\n") == 3
    with pytest.raises(ConfigError, match="needs class labels"):
        split({"all": sentences}, SILOS[:2], SplitPlan(scheme=Scheme.DIRICHLET))


def test_write_shards_and_manifest(tmp_path: Path) -> None:
    shards = split({"train": _images(30), "test": _images(9)}, SILOS, SplitPlan(seed=1))
    paths = write_shards(shards, tmp_path / "out", source="unit")
    manifest = json.loads((tmp_path / "out" / "split.json").read_text())
    assert manifest["scheme"] == "iid" and manifest["source"] == "unit"
    for silo in SILOS:
        with np.load(paths[silo]["train"], allow_pickle=False) as data:
            assert len(data["x"]) == manifest["silos"][silo]["train"]["rows"] == 10
            values, counts = np.unique(data["y"], return_counts=True)
            labels = {str(k): int(v) for k, v in zip(values, counts, strict=True)}
        assert manifest["silos"][silo]["train"]["labels"] == labels


def test_parse_plan_reads_command_line_text() -> None:
    base = SplitPlan(test_fraction=0.2)
    plan = parse_plan(base, scheme="time", edges="10,20", limits=["train=5"], seed=3)
    assert plan.scheme is Scheme.TIME and plan.edges == (10.0, 20.0)
    assert plan.limits == {"train": 5} and plan.seed == 3 and plan.test_fraction == 0.2
    assert parse_plan(base) == base
    with pytest.raises(ConfigError, match="unknown scheme 'random'"):
        parse_plan(scheme="random")
    with pytest.raises(ConfigError, match="ROLE=ROWS"):
        parse_plan(limits=["train:5"])
    with pytest.raises(ConfigError, match="needs the column"):
        split({"train": _images(9)}, SILOS, SplitPlan(scheme=Scheme.COLUMN))
