"""Loaders read the publishers' formats, and say which file is missing or damaged."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fedsilo.datasets import (
    Sentences,
    data_root,
    load_creditcard,
    load_dataset,
    load_fashion_mnist,
    load_pneumoniamnist,
    load_wnut16,
    read_conll,
    read_idx,
)
from fedsilo.errors import ConfigError
from tests.datasets.real_data import real_data


def _idx(path: Path, array: np.ndarray, *, type_code: int = 0x08) -> Path:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())
    return path


def _fashion(root: Path, train: int = 12, test: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        _idx(
            root / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28)),
        )
        _idx(root / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_fashion_mnist_is_read_from_idx_gzip(tmp_path: Path) -> None:
    parts = load_fashion_mnist(_fashion(tmp_path))
    assert {k: len(v) for k, v in parts.items()} == {"train": 12, "test": 5}
    train = parts["train"].arrays
    assert train["x"].shape == (12, 28, 28) and train["x"].dtype == np.uint8
    assert train["y"].tolist() == [i % 10 for i in range(12)]


def test_root_defaults_to_fedsilo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSILO_DATA", str(_fashion(tmp_path)))
    assert len(load_fashion_mnist()["test"]) == 5
    monkeypatch.delenv("FEDSILO_DATA")
    with pytest.raises(ConfigError, match="set FEDSILO_DATA"):
        data_root()


def test_a_missing_file_is_named_with_where_to_download_it(tmp_path: Path) -> None:
    _fashion(tmp_path)
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as caught:
        load_fashion_mnist(tmp_path)
    text = str(caught.value)
    assert "t10k-labels-idx1-ubyte.gz is missing" in text
    assert "github.com/zalandoresearch/fashion-mnist" in text
    assert caught.value.file == str(tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")


def test_damaged_idx_files_are_refused(tmp_path: Path) -> None:
    good = _idx(tmp_path / "a.gz", np.zeros((2, 3), np.uint8))
    assert read_idx(good, ndim=2).shape == (2, 3)
    with pytest.raises(ConfigError, match="expected 3"):
        read_idx(good, ndim=3)
    wrong_type = _idx(tmp_path / "b.gz", np.zeros(4, np.uint8), type_code=0x0D)
    with pytest.raises(ConfigError, match="type 0x0d"):
        read_idx(wrong_type, ndim=1)
    truncated = tmp_path / "c.gz"
    with gzip.open(truncated, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 4)
    with pytest.raises(ConfigError, match="declares 10 values but holds 4"):
        read_idx(truncated, ndim=1)
    not_gzip = tmp_path / "d.gz"
    not_gzip.write_bytes(b"plain text")
    with pytest.raises(ConfigError, match=r"cannot read d\.gz as gzip"):
        read_idx(not_gzip, ndim=1)


def test_pneumoniamnist_npz_is_read_without_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "pneumoniamnist"
    folder.mkdir()
    arrays = {}
    for role, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{role}_images"] = np.zeros((n, 28, 28), np.uint8)
        arrays[f"{role}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez(folder / "pneumoniamnist.npz", **arrays)
    parts = load_pneumoniamnist(tmp_path)
    assert {k: len(v) for k, v in parts.items()} == {"train": 6, "val": 2, "test": 3}
    assert parts["test"].arrays["y"].tolist() == [0, 1, 0]

    del arrays["val_labels"]
    np.savez(folder / "pneumoniamnist.npz", **arrays)
    with pytest.raises(ConfigError, match="lacks val_labels"):
        load_pneumoniamnist(tmp_path)
    arrays["val_labels"] = np.array([object(), object()], dtype=object)
    np.savez(folder / "pneumoniamnist.npz", **arrays)
    with pytest.raises(ConfigError, match=r"cannot read pneumoniamnist\.npz"):
        load_pneumoniamnist(tmp_path)


_HEADER = ",".join(f'"{c}"' for c in ("Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"))


def _creditcard(root: Path, rows: list[tuple[float, float, int]]) -> Path:
    folder = root / "creditcard"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [_HEADER]
    for time, amount, label in rows:
        lines.append(",".join([f"{time:g}", *(["0.5"] * 28), f"{amount:g}", f'"{label}"']))
    with gzip.open(folder / "creditcard.csv.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return root


def test_creditcard_gzipped_csv_with_quoted_header_and_labels(tmp_path: Path) -> None:
    data = load_creditcard(_creditcard(tmp_path, [(0, 9.99, 0), (3600 * 25, 120.0, 1)]))
    a = data.arrays
    assert a["x"].shape == (2, 29) and a["x"][1, -1] == pytest.approx(120.0)
    assert a["y"].tolist() == [0, 1]
    assert a["hour"].tolist() == [0, 1]
    assert a["time"].tolist() == [0.0, 90000.0]


def test_creditcard_with_other_columns_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "creditcard"
    folder.mkdir()
    with gzip.open(folder / "creditcard.csv.gz", "wt") as fh:
        fh.write("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"expected Time, V1\.\.V28, Amount, Class"):
        load_creditcard(tmp_path)


def test_wnut_token_tag_text(tmp_path: Path) -> None:
    folder = tmp_path / "wnut16"
    folder.mkdir()
    (folder / "wnut16_train.txt").write_text(
        "Empire\tB-facility\nState\tI-facility\n!\tO\n\t\n@paul\tO\nhi\tO\n\t\n"
    )
    data = load_wnut16(tmp_path)
    assert [s.tokens for s in data.sentences] == [("Empire", "State", "!"), ("@paul", "hi")]
    assert data.column("entities").tolist() == [1, 0]
    # what save writes, read_conll reads back identically
    again = read_conll(data.save(tmp_path / "copy.txt"))
    assert again.sentences == data.sentences


def test_a_bad_tag_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("ok\tO\nbroken line without tab\n")
    with pytest.raises(ConfigError) as caught:
        read_conll(path)
    assert caught.value.line == 2 and "token<TAB>tag" in str(caught.value)


def test_load_dataset_by_file_and_unknown_source(tmp_path: Path) -> None:
    np.savez(tmp_path / "rows.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    parts = load_dataset(str(tmp_path / "rows.npz"))
    assert list(parts) == ["all"] and parts["all"].labels() is not None
    (tmp_path / "s.txt").write_text("a\tO\n")
    assert isinstance(load_dataset(str(tmp_path / "s.txt"))["all"], Sentences)
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(str(tmp_path / "nothing.npz"))
    with pytest.raises(ConfigError, match="no array 'label'"):
        load_dataset(str(tmp_path / "rows.npz"), label="label")


# The real files, as their publishers ship them (skipped without FEDSILO_DATA).


def test_real_fashion_mnist() -> None:
    parts = load_fashion_mnist(real_data("fashion-mnist"))
    assert {k: len(v) for k, v in parts.items()} == {"train": 60000, "test": 10000}
    assert np.bincount(parts["test"].arrays["y"]).tolist() == [1000] * 10


def test_real_pneumoniamnist() -> None:
    parts = load_pneumoniamnist(real_data("pneumoniamnist"))
    assert {k: len(v) for k, v in parts.items()} == {"train": 3882, "val": 524, "test": 624}
    assert np.bincount(parts["test"].arrays["y"]).tolist() == [234, 390]


def test_real_creditcard() -> None:
    data = load_creditcard(real_data("creditcard"))
    assert len(data) == 284807 and int(data.arrays["y"].sum()) == 492
    assert data.arrays["time"].max() <= 2 * 24 * 3600


def test_real_wnut16() -> None:
    data = load_wnut16(real_data("wnut16"))
    assert len(data) == 2394
    assert sum(len(s.tokens) for s in data.sentences) == 46469
