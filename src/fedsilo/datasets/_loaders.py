"""Loaders that read the public datasets in the formats their publishers ship.

Each takes the data root (default: ``$FEDSILO_DATA``) and reads the original files from
the dataset's folder under it: IDX gzip for Fashion-MNIST, ``.npz`` for PneumoniaMNIST
(read with ``allow_pickle=False``), gzipped CSV for the ULB credit-card transactions, and
``token<TAB>tag`` text for WNUT-16. A missing file is an error naming it and where to
download it; a damaged one is an error naming it and what is wrong.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.datasets._records import Arrays, Sentence, Sentences, Shardable
from fedsilo.datasets._source import source_file
from fedsilo.errors import ConfigError

__all__ = [
    "load_creditcard",
    "load_dataset",
    "load_fashion_mnist",
    "load_npz",
    "load_pneumoniamnist",
    "load_wnut16",
    "read_conll",
    "read_idx",
]

Array = np.ndarray[Any, Any]

_IDX_UBYTE = 0x08
_CREDITCARD_COLUMNS = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class")
_TAG = re.compile(r"^(O|[BI]-[A-Za-z][A-Za-z_-]*)$")


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(
            f"cannot read {path.name} as gzip ({exc}); download the file again",
            file=str(path),
        ) from exc


def read_idx(path: Path, *, ndim: int) -> Array:
    """Read one gzipped IDX file of unsigned bytes (the MNIST family's format).

    The header is two zero bytes, the type code (0x08 for unsigned bytes), the number of
    dimensions, then each dimension as a big-endian 32-bit integer; the data follows.
    """
    raw = _gunzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{path.name} is not an IDX file (bad magic number)", file=str(path))
    if raw[2] != _IDX_UBYTE:
        raise ConfigError(
            f"{path.name} holds IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08) are read",
            file=str(path),
        )
    if raw[3] != ndim:
        raise ConfigError(f"{path.name} has {raw[3]} dimensions; expected {ndim}", file=str(path))
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ConfigError(
            f"{path.name} declares {'x'.join(map(str, dims))} values but holds "
            f"{len(raw) - header} bytes of data; download the file again",
            file=str(path),
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_fashion_mnist(root: Path | str | None = None) -> dict[str, Arrays]:
    """Fashion-MNIST's ``train`` (60,000) and ``test`` (10,000) parts.

    Each is ``x`` (uint8, N x 28 x 28 grey levels) and ``y`` (int64 class 0-9).
    """
    parts: dict[str, Arrays] = {}
    for role, prefix in (("train", "train"), ("test", "t10k")):
        images_file = source_file("fashion-mnist", f"{prefix}-images-idx3-ubyte.gz", root)
        labels_file = source_file("fashion-mnist", f"{prefix}-labels-idx1-ubyte.gz", root)
        images = read_idx(images_file, ndim=3)
        labels = read_idx(labels_file, ndim=1).astype(np.int64)
        if len(images) != len(labels):
            raise ConfigError(
                f"{images_file.name} holds {len(images)} images but {labels_file.name} "
                f"{len(labels)} labels",
                file=str(labels_file),
            )
        if labels.size and labels.max() > 9:
            raise ConfigError(f"{labels_file.name} holds labels above 9", file=str(labels_file))
        parts[role] = Arrays({"x": images, "y": labels}, label="y")
    return parts


def load_pneumoniamnist(root: Path | str | None = None) -> dict[str, Arrays]:
    """PneumoniaMNIST's ``train``, ``val`` and ``test`` parts (MedMNIST v2, 28 x 28).

    Each is ``x`` (uint8, N x 28 x 28) and ``y`` (int64: 0 normal, 1 pneumonia).
    """
    path = source_file("pneumoniamnist", "pneumoniamnist.npz", root)
    parts: dict[str, Arrays] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for role in ("train", "val", "test"):
                keys = (f"{role}_images", f"{role}_labels")
                missing = [k for k in keys if k not in data.files]
                if missing:
                    raise ConfigError(
                        f"{path.name} lacks {', '.join(missing)} (it holds "
                        f"{', '.join(sorted(data.files))}); download the MedMNIST v2 file again",
                        file=str(path),
                    )
                images = np.asarray(data[keys[0]], dtype=np.uint8)
                labels = np.asarray(data[keys[1]]).reshape(-1).astype(np.int64)
                if images.ndim != 3 or len(images) != len(labels):
                    raise ConfigError(
                        f"{path.name}: {keys[0]} has shape {images.shape} and {keys[1]} "
                        f"{len(labels)} labels; expected N x 28 x 28 images and N labels",
                        file=str(path),
                    )
                parts[role] = Arrays({"x": images, "y": labels}, label="y")
    except (OSError, ValueError, zlib.error) as exc:
        raise ConfigError(f"cannot read {path.name} as .npz: {exc}", file=str(path)) from exc
    return parts


def load_creditcard(root: Path | str | None = None) -> Arrays:
    """The ULB credit-card transactions (284,807 rows over two days, 492 frauds).

    ``x`` (float32, N x 29): the PCA components V1-V28 and the amount; ``y`` (int64: 1
    fraud); and, to split by: ``time`` (seconds since the first transaction), ``hour``
    (the hour of the day, 0-23, counting from the first transaction) and ``amount``.
    """
    path = source_file("creditcard", "creditcard.csv.gz", root)
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            header = [c.strip().strip('"') for c in fh.readline().strip().split(",")]
            if tuple(header) != _CREDITCARD_COLUMNS:
                raise ConfigError(
                    f"{path.name} has the columns {', '.join(header[:5])}...; expected "
                    "Time, V1..V28, Amount, Class (the Kaggle mlg-ulb/creditcardfraud file)",
                    file=str(path),
                )
            table = np.loadtxt(fh, delimiter=",", quotechar='"', dtype=np.float64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ConfigError(f"cannot read {path.name} as gzipped CSV: {exc}", file=str(path)) from exc
    if table.shape[1] != len(_CREDITCARD_COLUMNS):
        raise ConfigError(
            f"{path.name} rows have {table.shape[1]} values; expected {len(_CREDITCARD_COLUMNS)}",
            file=str(path),
        )
    labels = table[:, -1]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ConfigError(
            f"{path.name}: column Class holds values other than 0 and 1", file=str(path)
        )
    time = table[:, 0]
    return Arrays(
        {
            "x": table[:, 1:30].astype(np.float32),
            "y": labels.astype(np.int64),
            "time": time,
            "hour": ((time // 3600) % 24).astype(np.int64),
            "amount": table[:, 29].copy(),
        },
        label="y",
    )


def load_wnut16(root: Path | str | None = None) -> Sentences:
    """WNUT-16's training tweets: 2,394 sentences, one BIO tag per token (10 entity types)."""
    path = source_file("wnut16", "wnut16_train.txt", root)
    return read_conll(path)


def read_conll(path: Path) -> Sentences:
    """Read ``token<TAB>tag`` lines, sentences separated by blank (or tab-only) lines."""
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path.name} as UTF-8 text: {exc}", file=str(path)) from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if tokens:
                sentences.append(Sentence(tuple(tokens), tuple(tags)))
                tokens, tags = [], []
            continue
        token, sep, tag = line.rpartition("\t")
        tag = tag.strip()
        if not sep or not token or not _TAG.match(tag):
            raise ConfigError(
                f"line {number} is not 'token<TAB>tag' with a BIO tag (O, B-type, I-type): "
                f"{line[:60]!r}",
                file=str(path),
                line=number,
            )
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append(Sentence(tuple(tokens), tuple(tags)))
    if not sentences:
        raise ConfigError(f"{path.name} holds no sentences", file=str(path))
    return Sentences(sentences)


def load_npz(path: Path, *, label: str | None = None) -> Arrays:
    """A ``.npz`` file's arrays as rows (``allow_pickle=False``); ``label`` names the labels.

    Without ``label``, an array called ``y`` is taken as the labels when there is one.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, zlib.error) as exc:
        raise ConfigError(f"cannot read {path.name} as .npz: {exc}", file=str(path)) from exc
    if label is None and "y" in arrays:
        label = "y"
    if label is not None and label not in arrays:
        raise ConfigError(
            f"{path.name} has no array '{label}' (it holds {', '.join(sorted(arrays))})",
            file=str(path),
            field="label",
        )
    return Arrays(arrays, label=label)


def load_dataset(
    source: str, root: Path | str | None = None, *, label: str | None = None
) -> dict[str, Shardable]:
    """A dataset's parts by name (``fashion-mnist``, ``pneumoniamnist``, ``creditcard``,
    ``wnut16``, read from the data root) or from a file: ``.npz`` arrays or ``.txt``
    ``token<TAB>tag`` sentences. A dataset in one piece has the single part ``all``.
    """
    if source in ("fashion-mnist", "pneumoniamnist"):
        loader = load_fashion_mnist if source == "fashion-mnist" else load_pneumoniamnist
        return dict(loader(root))
    if source == "creditcard":
        return {"all": load_creditcard(root)}
    if source == "wnut16":
        return {"all": load_wnut16(root)}
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".npz":
        return {"all": load_npz(path, label=label)}
    if path.is_file() and path.suffix.lower() == ".txt":
        return {"all": read_conll(path)}
    raise ConfigError(
        f"cannot split {source!r}: give a dataset name (creditcard, fashion-mnist, "
        "pneumoniamnist, wnut16) or a .npz file or a token<TAB>tag .txt file"
        + ("" if path.exists() else f"; {path} does not exist"),
        file=source if path.exists() else None,
    )
