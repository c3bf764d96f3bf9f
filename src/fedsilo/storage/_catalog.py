"""A silo's catalog: the data it holds, each with one classification and a digest.

The catalog lives inside the silo's storage root: ``catalog.db`` (SQLite) records every
dataset, and ``data/<name>/`` holds its copy. A file keeps its own name inside that folder
(``data/<name>/<file name>``); a folder is copied as ``data/<name>/``. Contents are copied
to a temporary name inside the storage root first and moved into place with one rename,
so a reader never sees half a dataset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict

from fedsilo.config import Classification, Kit, Role
from fedsilo.errors import ClassificationError, ConfigError, DatasetNotFound, WorkspaceError

__all__ = ["Catalog", "DatasetRecord", "add_dataset", "open_catalog"]

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CATALOG_FILE = "catalog.db"
DATA_DIR = "data"
_CHUNK = 1 << 20


class DatasetRecord(BaseModel):
    """One dataset in a silo's catalog: what it is, never what it contains."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    classification: Classification
    kind: Literal["file", "folder"]
    size_bytes: int
    sha256: str
    relpath: str
    added_at: dt.datetime


_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    classification TEXT NOT NULL,
    kind TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    relpath TEXT NOT NULL,
    added_at TEXT NOT NULL
)
"""
_COLUMNS = "name, classification, kind, size_bytes, sha256, relpath, added_at"


def _record(row: tuple[str, str, str, int, str, str, str]) -> DatasetRecord:
    name, classification, kind, size, sha256, relpath, added = row
    added_at = dt.datetime.fromisoformat(added)
    if added_at.tzinfo is None:
        added_at = added_at.replace(tzinfo=dt.UTC)
    return DatasetRecord(
        name=name,
        classification=Classification(classification),
        kind="file" if kind == "file" else "folder",
        size_bytes=size,
        sha256=sha256,
        relpath=relpath,
        added_at=added_at,
    )


class Catalog:
    """The catalog of the silo ``silo`` whose storage root is ``storage_root``.

    Use it as a context manager, or call :meth:`close`, to release the database.
    """

    def __init__(self, storage_root: Path, *, silo: str) -> None:
        self.storage_root = Path(storage_root).expanduser().absolute()
        self.silo = silo
        try:
            self.storage_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot use {self.storage_root} as storage of silo '{silo}': {exc}"
            ) from exc
        self._db_file = self.storage_root / CATALOG_FILE
        try:
            with self._connect() as db:
                db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise WorkspaceError(f"cannot open the catalog of silo '{silo}': {exc}") from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the catalog database, committed on success."""
        db = sqlite3.connect(self._db_file, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays open between calls; kept so a catalog works as a context manager."""

    def add(
        self,
        name: str,
        source: Path,
        classification: Classification,
        *,
        replace: bool = False,
    ) -> DatasetRecord:
        """Copy the file or folder ``source`` into storage as dataset ``name`` and record it.

        An existing ``name`` is a :class:`ConfigError` unless ``replace``; so is a name
        that is not 1-128 letters, digits, ``.``, ``_`` or ``-``, or a missing ``source``.
        """
        if not DATASET_NAME.match(name):
            raise ConfigError(
                f"'{name}' is not a valid dataset name: use 1-128 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit",
                field="name",
            )
        source = Path(source).expanduser()
        if not source.exists():
            raise ConfigError("no such file or folder", file=str(source))
        if not replace and self._find(name) is not None:
            raise ConfigError(
                f"silo '{self.silo}' already has a dataset '{name}'; pass --replace to replace it"
            )
        kind: Literal["file", "folder"] = "folder" if source.is_dir() else "file"
        data_dir = self.storage_root / DATA_DIR
        data_dir.mkdir(mode=0o700, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".add-{name}-", dir=self.storage_root))
        try:
            if kind == "folder":
                content = staged / "content"
                shutil.copytree(source, content)
                size, digest = _folder_digest(content)
                relpath = f"{DATA_DIR}/{name}"
            else:
                content = staged / "content"
                content.mkdir()
                shutil.copyfile(source, content / source.name)
                size, digest = _file_digest(content / source.name)
                relpath = f"{DATA_DIR}/{name}/{source.name}"
            target = data_dir / name
            if target.exists():
                target.rename(staged / "previous")
            content.rename(target)
            row = (
                name,
                Classification(classification).value,
                kind,
                size,
                digest,
                relpath,
                dt.datetime.now(dt.UTC).isoformat(),
            )
            with self._connect() as db:
                db.execute(
                    f"INSERT OR REPLACE INTO datasets ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)", row
                )
            return _record(row)
        except OSError as exc:
            raise WorkspaceError(f"cannot copy {source} into silo '{self.silo}': {exc}") from exc
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def get(self, name: str) -> DatasetRecord:
        """The record of dataset ``name``; :class:`DatasetNotFound` if there is none."""
        record = self._find(name)
        if record is None:
            raise DatasetNotFound(self.silo, name, self.names())
        return record

    def path_of(self, name: str) -> Path:
        """The absolute path of dataset ``name`` in storage (the file, or the folder)."""
        return self.storage_root / self.get(name).relpath

    def names(self) -> list[str]:
        """The names of the silo's datasets, sorted: what a job may name as an input."""
        with self._connect() as db:
            rows = db.execute("SELECT name FROM datasets ORDER BY name").fetchall()
        return [str(row[0]) for row in rows]

    def list(self) -> list[DatasetRecord]:
        """Every dataset of the silo, by name."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM datasets ORDER BY name").fetchall()
        return [_record(row) for row in rows]

    def _find(self, name: str) -> DatasetRecord | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM datasets WHERE name = ?", (name,)).fetchone()
        return None if row is None else _record(row)


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


def _folder_digest(folder: Path) -> tuple[int, str]:
    """Total size and the SHA-256 over sorted ``relpath\\0filesha\\n`` lines of its files."""
    lines: list[str] = []
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            path = Path(dirpath) / filename
            size, file_sha = _file_digest(path)
            total += size
            lines.append(f"{path.relative_to(folder).as_posix()}\0{file_sha}\n")
    digest = hashlib.sha256("".join(sorted(lines)).encode("utf-8"))
    return total, digest.hexdigest()


def open_catalog(kit: Kit) -> Catalog:
    """The catalog of the silo whose kit is ``kit``; :class:`ConfigError` for another role."""
    if kit.role is not Role.SILO:
        raise ConfigError(
            f"'{kit.name}' is the {kit.role} of federation '{kit.federation}', not a silo; "
            "only a silo has a catalog"
        )
    return Catalog(kit.storage_path, silo=kit.name)


def add_dataset(
    kit: Kit,
    name: str,
    source: Path,
    classification: Classification,
    *,
    replace: bool = False,
) -> DatasetRecord:
    """Register ``source`` as dataset ``name`` in the catalog of the silo of ``kit``.

    When the federation spec declares the dataset for this silo, registering it with a
    less strict classification than declared is a :class:`ClassificationError`.
    """
    classification = Classification(classification)
    declared = kit.silo.dataset(name) if kit.silo is not None else None
    if declared is not None and classification.rank < declared.classification.rank:
        raise ClassificationError(
            f"silo '{kit.name}' declares dataset '{name}' as '{declared.classification}' in "
            f"federation '{kit.federation}'; it cannot be registered as '{classification}'"
        )
    with open_catalog(kit) as catalog:
        return catalog.add(name, source, classification, replace=replace)
