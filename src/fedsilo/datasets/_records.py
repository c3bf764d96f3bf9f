"""What a dataset is to the partitioners: rows that can be taken by index and saved.

Two kinds of rows cover the public datasets: :class:`Arrays` (named numpy arrays sharing
their first axis: images and labels, a table's columns) saved as ``.npz``, and
:class:`Sentences` (token sequences with one tag per token) saved in the original
``token<TAB>tag`` text format. Both satisfy :class:`Shardable`, which is all
:func:`fedsilo.datasets.split` needs; a new format plugs in by satisfying it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from fedsilo.errors import ConfigError

__all__ = ["Arrays", "Sentence", "Sentences", "Shardable"]

Array = np.ndarray[Any, Any]


class Shardable(Protocol):
    """Rows of a dataset that a partition can deal out to silos."""

    @property
    def suffix(self) -> str:
        """The file suffix :meth:`save` writes (``.npz``, ``.txt``)."""
        ...

    def __len__(self) -> int: ...

    def take(self, index: Array) -> Self:
        """The rows at ``index``, in that order."""
        ...

    def labels(self) -> Array | None:
        """One class label per row (for label skew and stratified hold-outs), or None."""
        ...

    def column(self, name: str) -> Array:
        """One value per row of the column ``name`` (for splits by attribute or time)."""
        ...

    def save(self, path: Path) -> Path:
        """Write the rows to ``path`` in the format a task reads; return ``path``."""
        ...


@dataclass(frozen=True)
class Arrays:
    """Named arrays that share their first axis; one row per index of that axis.

    ``label`` names the array of class labels, if any. Saved with :func:`numpy.savez`,
    so a task reads a shard back with ``np.load(path, allow_pickle=False)``.
    """

    arrays: Mapping[str, Array]
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.arrays:
            raise ConfigError("a dataset needs at least one array")
        lengths = {name: len(a) for name, a in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(
                "the arrays of a dataset must have the same number of rows, not "
                + ", ".join(f"{n}: {k}" for n, k in sorted(lengths.items()))
            )
        for name, array in self.arrays.items():
            if array.dtype.hasobject:
                raise ConfigError(f"array '{name}' holds Python objects; use numbers or strings")
        if self.label is not None and self.label not in self.arrays:
            raise ConfigError(
                f"the label array '{self.label}' is not among the arrays "
                f"({', '.join(sorted(self.arrays))})",
                field="label",
            )

    @property
    def suffix(self) -> str:
        """Arrays are saved as ``.npz``."""
        return ".npz"

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def take(self, index: Array) -> Arrays:
        """The rows at ``index`` of every array."""
        return Arrays({k: v[index] for k, v in self.arrays.items()}, label=self.label)

    def labels(self) -> Array | None:
        """The label array, when ``label`` names one."""
        return None if self.label is None else self.arrays[self.label]

    def column(self, name: str) -> Array:
        """A one-dimensional array by name; an error lists the ones there are."""
        array = self.arrays.get(name)
        if array is None or array.ndim != 1:
            columns = [k for k, v in self.arrays.items() if v.ndim == 1]
            raise ConfigError(
                f"no column '{name}' to split by; the columns are: {', '.join(columns) or 'none'}",
                field="column",
            )
        return array

    def save(self, path: Path) -> Path:
        """Write every array into one ``.npz`` file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            np.savez(fh, **dict(self.arrays))  # type: ignore[arg-type]
        return path


@dataclass(frozen=True)
class Sentence:
    """One sentence (a tweet): its tokens and one tag per token."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.tags):
            raise ConfigError(f"a sentence has {len(self.tokens)} tokens but {len(self.tags)} tags")


@dataclass(frozen=True)
class Sentences:
    """Tagged sentences, one row each; saved as ``token<TAB>tag`` lines, a blank between.

    ``extra`` holds optional per-sentence columns (for a split by attribute).
    """

    sentences: Sequence[Sentence]
    extra: Mapping[str, Array] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        """Sentences are saved as text."""
        return ".txt"

    def __len__(self) -> int:
        return len(self.sentences)

    def take(self, index: Array) -> Sentences:
        """The sentences at ``index``."""
        return Sentences(
            [self.sentences[int(i)] for i in index],
            {k: v[index] for k, v in self.extra.items()},
        )

    def labels(self) -> Array | None:
        """Sentences carry no single class label."""
        return None

    def column(self, name: str) -> Array:
        """A per-sentence column: ``length`` (tokens), ``entities`` (B- tags), or an extra."""
        if name == "length":
            return np.array([len(s.tokens) for s in self.sentences], dtype=np.int64)
        if name == "entities":
            return np.array(
                [sum(t.startswith("B-") for t in s.tags) for s in self.sentences], dtype=np.int64
            )
        if name in self.extra:
            return self.extra[name]
        columns = ["length", "entities", *self.extra]
        raise ConfigError(
            f"no column '{name}' to split by; the columns are: {', '.join(columns)}",
            field="column",
        )

    def save(self, path: Path) -> Path:
        """Write the sentences in the WNUT/CoNLL layout they were read from."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for sentence in self.sentences:
                for token, tag in zip(sentence.tokens, sentence.tags, strict=True):
                    fh.write(f"{token}\t{tag}\n")
                fh.write("\t\n")
        return path
