"""Pooling the silos' inputs for Central-all: npz arrays, CSV rows, folders of files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from fedsilo.errors import ConfigError
from fedsilo.pipelines import pool_files, pool_inputs


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_arrays_are_concatenated_key_by_key(tmp_path: Path) -> None:
    a = _npz(tmp_path / "a" / "train.npz", x=np.zeros((2, 3)), y=np.array([0, 1]))
    b = _npz(tmp_path / "b" / "train.npz", x=np.ones((3, 3)), y=np.array([2, 3, 4]))
    out = pool_files("train", {"silo-a": a, "silo-b": b}, tmp_path / "out")
    with np.load(out) as data:
        assert data["x"].shape == (5, 3)
        assert data["y"].tolist() == [0, 1, 2, 3, 4]


def test_npz_with_other_keys_is_refused_naming_the_file(tmp_path: Path) -> None:
    a = _npz(tmp_path / "a.npz", x=np.zeros((2, 3)), y=np.zeros(2))
    b = _npz(tmp_path / "b.npz", x=np.zeros((2, 3)), label=np.zeros(2))
    with pytest.raises(ConfigError, match=r"b\.npz of silo 'silo-b'"):
        pool_files("train", {"silo-a": a, "silo-b": b}, tmp_path / "out")


def test_npz_with_other_shapes_is_refused(tmp_path: Path) -> None:
    a = _npz(tmp_path / "a.npz", x=np.zeros((2, 3)))
    b = _npz(tmp_path / "b.npz", x=np.zeros((2, 4)))
    with pytest.raises(ConfigError, match="do not concatenate"):
        pool_files("train", {"silo-a": a, "silo-b": b}, tmp_path / "out")


def test_csv_rows_are_concatenated_under_one_header(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("age,label\n31,0\n45,1\n")
    (tmp_path / "b.csv").write_text('age,label\n"52",1')
    out = pool_files(
        "train", {"silo-a": tmp_path / "a.csv", "silo-b": tmp_path / "b.csv"}, tmp_path / "out"
    )
    assert out.read_text().splitlines() == ["age,label", "31,0", "45,1", "52,1"]


def test_csv_with_another_header_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("age,label\n31,0\n")
    (tmp_path / "b.csv").write_text("label,age\n1,52\n")
    with pytest.raises(ConfigError, match=r"b\.csv of silo 'silo-b' has the header"):
        pool_files(
            "train",
            {"silo-a": tmp_path / "a.csv", "silo-b": tmp_path / "b.csv"},
            tmp_path / "out",
        )


def test_folders_are_merged_keeping_subfolders(tmp_path: Path) -> None:
    for silo in ("silo-a", "silo-b"):
        (tmp_path / silo / "cat").mkdir(parents=True)
        (tmp_path / silo / "cat" / "1.png").write_bytes(silo.encode())
    out = pool_files("train", {s: tmp_path / s for s in ("silo-a", "silo-b")}, tmp_path / "out")
    assert sorted(p.name for p in (out / "cat").iterdir()) == ["silo-a_1.png", "silo-b_1.png"]
    assert (out / "cat" / "silo-b_1.png").read_bytes() == b"silo-b"


@pytest.mark.parametrize("names", [("a.parquet", "b.parquet"), ("a.npz", "b.csv")])
def test_unpoolable_files_are_a_clear_error(tmp_path: Path, names: tuple[str, str]) -> None:
    paths = {}
    for silo, name in zip(("silo-a", "silo-b"), names, strict=True):
        paths[silo] = tmp_path / name
        paths[silo].write_bytes(b"data")
    with pytest.raises(ConfigError, match="cannot pool input 'train'") as caught:
        pool_files("train", paths, tmp_path / "out")
    assert str(tmp_path) in str(caught.value)
    assert "pool function" in str(caught.value)


def test_every_role_is_pooled_and_a_custom_pool_is_used(tmp_path: Path) -> None:
    seen: list[str] = []

    def pool(role: str, paths: Mapping[str, Path], out: Path) -> Path:
        seen.append(role)
        return out / role

    inputs = {s: {"train": tmp_path / s, "test": tmp_path / s} for s in ("silo-a", "silo-b")}
    pooled = pool_inputs(inputs, tmp_path / "out", pool)
    assert seen == ["test", "train"]
    assert pooled == {"test": tmp_path / "out" / "test", "train": tmp_path / "out" / "train"}


def test_a_role_missing_in_one_silo_is_named(tmp_path: Path) -> None:
    inputs = {"silo-a": {"train": tmp_path}, "silo-b": {"test": tmp_path}}
    with pytest.raises(ConfigError, match=r"'test'.*silo-a"):
        pool_inputs(inputs, tmp_path / "out")
