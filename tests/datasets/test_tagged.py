"""Tagged sentences as folders: split into per-silo folders, pooled, read back whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.datasets import (
    Sentence,
    SentenceFolder,
    Sentences,
    SplitPlan,
    read_sentences,
    split,
    write_shards,
)
from fedsilo.errors import ConfigError
from fedsilo.pipelines import pool_files

SILOS = ("silo-a", "silo-b")


def _tweets(n: int) -> SentenceFolder:
    return SentenceFolder(
        Sentences([Sentence((f"w{i}", "@x", "Paris"), ("O", "O", "B-geo-loc")) for i in range(n)])
    )


def test_shards_are_folders_that_pool_and_read_back_every_sentence(tmp_path: Path) -> None:
    shards = split({"all": _tweets(20)}, SILOS, SplitPlan(test_fraction=0.25))
    paths = write_shards(shards, tmp_path / "shards", source="test")
    for silo in SILOS:
        assert paths[silo]["train"].is_dir() and paths[silo]["test"].is_dir()
    pooled = pool_files("train", {s: paths[s]["train"] for s in SILOS}, tmp_path / "pooled")
    sentences = read_sentences(pooled)
    assert sorted(s.tokens[0] for s in sentences) == sorted(
        s.tokens[0] for silo in SILOS for s in read_sentences(paths[silo]["train"])
    )
    test_rows = sum(len(read_sentences(paths[s]["test"])) for s in SILOS)
    assert len(sentences) + test_rows == 20
    assert sentences[0].tags == ("O", "O", "B-geo-loc")


def test_a_folder_without_tagged_text_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no token<TAB>tag"):
        read_sentences(tmp_path / "empty")
    with pytest.raises(ConfigError, match="neither"):
        read_sentences(tmp_path / "missing")
