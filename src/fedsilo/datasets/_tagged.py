"""Tagged sentences kept as folders, so that the silos' shards pool like any other data.

A silo's share of a tagging dataset (WNUT-16) is a folder holding ``sentences.txt`` in the
original ``token<TAB>tag`` layout. A folder rather than a bare ``.txt`` file, because
folders are what the centralized baselines pool without knowing the format (each silo's
files copied into one folder), and a task reads one silo's folder and the pooled folder
the same way, with :func:`read_sentences`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.datasets._loaders import load_wnut16, read_conll
from fedsilo.datasets._records import Sentence, Sentences
from fedsilo.errors import ConfigError

__all__ = ["SentenceFolder", "load_wnut16_folders", "read_sentences"]

Array = np.ndarray[Any, Any]
SENTENCES_FILE = "sentences.txt"


@dataclass(frozen=True)
class SentenceFolder:
    """:class:`Sentences` that save as a folder holding one ``token<TAB>tag`` file."""

    sentences: Sentences

    @property
    def suffix(self) -> str:
        """A folder has no suffix: the shard of part ``train`` is the folder ``train``."""
        return ""

    def __len__(self) -> int:
        return len(self.sentences)

    def take(self, index: Array) -> SentenceFolder:
        """The sentences at ``index``."""
        return SentenceFolder(self.sentences.take(index))

    def labels(self) -> Array | None:
        """Sentences carry no single class label."""
        return self.sentences.labels()

    def column(self, name: str) -> Array:
        """A per-sentence column (see :meth:`Sentences.column`)."""
        return self.sentences.column(name)

    def save(self, path: Path) -> Path:
        """Write ``path/sentences.txt``; return the folder ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        self.sentences.save(path / SENTENCES_FILE)
        return path


def read_sentences(path: Path) -> list[Sentence]:
    """The sentences of a ``token<TAB>tag`` file, or of every ``.txt`` file in a folder.

    A folder's files are read in name order, so a pooled folder always gives the same
    order. A folder without any ``.txt`` file is an error naming it.
    """
    path = Path(path)
    if path.is_file():
        return list(read_conll(path).sentences)
    if not path.is_dir():
        raise ConfigError(f"{path} is neither a token<TAB>tag file nor a folder", file=str(path))
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise ConfigError(f"the folder {path} holds no token<TAB>tag .txt file", file=str(path))
    return [sentence for file in files for sentence in read_conll(file).sentences]


def load_wnut16_folders(root: Path | str | None = None) -> dict[str, SentenceFolder]:
    """WNUT-16's training tweets as one part, ``all``, whose shards are folders."""
    return {"all": SentenceFolder(load_wnut16(root))}
