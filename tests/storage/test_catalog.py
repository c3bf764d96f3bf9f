"""A silo's catalog: copies, digests, classifications and lookups."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.config import Classification, Kit, Role, SiloSpec
from fedsilo.errors import ClassificationError, ConfigError, DatasetNotFound
from fedsilo.storage import Catalog, add_dataset, open_catalog


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog(tmp_path / "storage", silo="silo-a") as opened:
        yield opened


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    source = tmp_path / "images"
    (source / "train" / "cats").mkdir(parents=True)
    (source / "train" / "cats" / "a.bin").write_bytes(bytes(range(256)) * 10)
    (source / "train" / "b.txt").write_text("bee\n")
    (source / "labels.csv").write_text("a,1\nb,0\n")
    return source


def _folder_sha(folder: Path) -> str:
    lines = sorted(
        f"{p.relative_to(folder).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in folder.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_add_a_file(catalog: Catalog, tmp_path: Path) -> None:
    source = tmp_path / "digits.csv"
    source.write_bytes(b"1,2,3\n4,5,6\n")
    record = catalog.add("digits-train", source, Classification.SENSITIVE)
    assert record.kind == "file"
    assert record.size_bytes == len(b"1,2,3\n4,5,6\n")
    assert record.sha256 == hashlib.sha256(b"1,2,3\n4,5,6\n").hexdigest()
    assert record.classification is Classification.SENSITIVE
    stored = catalog.path_of("digits-train")
    assert stored == catalog.storage_root / "data" / "digits-train" / "digits.csv"
    assert stored.read_bytes() == source.read_bytes()
    source.write_bytes(b"changed")
    assert stored.read_bytes() == b"1,2,3\n4,5,6\n"
    assert record.added_at.tzinfo is not None
    assert abs(record.added_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


def test_add_a_folder(catalog: Catalog, folder: Path) -> None:
    record = catalog.add("images", folder, Classification.INTERMEDIATE)
    assert record.kind == "folder"
    assert record.size_bytes == 2560 + 4 + 8
    assert record.sha256 == _folder_sha(folder)
    stored = catalog.path_of("images")
    assert (stored / "train" / "cats" / "a.bin").read_bytes() == bytes(range(256)) * 10
    assert _folder_sha(stored) == record.sha256


def test_folder_digest_depends_on_names_and_contents(catalog: Catalog, folder: Path) -> None:
    first = catalog.add("one", folder, Classification.EYES_ON).sha256
    (folder / "labels.csv").rename(folder / "labels2.csv")
    renamed = catalog.add("two", folder, Classification.EYES_ON).sha256
    (folder / "labels2.csv").write_text("a,0\n")
    edited = catalog.add("three", folder, Classification.EYES_ON).sha256
    assert len({first, renamed, edited}) == 3


def test_list_and_persistence(tmp_path: Path, folder: Path) -> None:
    root = tmp_path / "storage"
    with Catalog(root, silo="silo-a") as catalog:
        catalog.add("zeta", folder, Classification.EYES_ON)
        catalog.add("alpha", folder / "labels.csv", Classification.SENSITIVE)
    with Catalog(root, silo="silo-a") as reopened:
        records = reopened.list()
        assert [(r.name, r.classification, r.kind) for r in records] == [
            ("alpha", Classification.SENSITIVE, "file"),
            ("zeta", Classification.EYES_ON, "folder"),
        ]
        assert reopened.get("zeta") == records[1]
    assert (root / "catalog.db").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["catalog.db", "data"]


def test_missing_dataset(catalog: Catalog) -> None:
    with pytest.raises(DatasetNotFound, match="silo 'silo-a' has no dataset 'ghost'") as caught:
        catalog.get("ghost")
    assert (caught.value.silo, caught.value.dataset) == ("silo-a", "ghost")
    assert "its datasets: none; to register it: fedsilo data add" in str(caught.value)
    with pytest.raises(DatasetNotFound):
        catalog.path_of("ghost")


def test_a_mistyped_dataset_is_named_with_the_one_meant(catalog: Catalog, tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("a,1\n")
    for name in ("digits-train", "digits-test"):
        catalog.add(name, source, Classification.SENSITIVE)
    assert catalog.names() == ["digits-test", "digits-train"]
    with pytest.raises(DatasetNotFound) as caught:
        catalog.get("digits-trian")
    message = str(caught.value)
    assert "no dataset 'digits-trian' in its catalog (did you mean 'digits-train'?)" in message
    assert message.endswith("its datasets: digits-test, digits-train")  # not: register the typo
    assert caught.value.known == ("digits-test", "digits-train")
    with pytest.raises(DatasetNotFound, match="to register it: fedsilo data add") as far:
        catalog.get("xrays")
    assert "did you mean" not in str(far.value)


def test_existing_name_needs_replace(catalog: Catalog, tmp_path: Path, folder: Path) -> None:
    source = tmp_path / "v1.csv"
    source.write_text("old\n")
    catalog.add("table", source, Classification.SENSITIVE)
    other = tmp_path / "v2.csv"
    other.write_text("new rows\n")
    with pytest.raises(ConfigError, match=r"already has a dataset 'table'.*--replace"):
        catalog.add("table", other, Classification.SENSITIVE)
    assert catalog.path_of("table").read_text() == "old\n"
    record = catalog.add("table", folder, Classification.INTERMEDIATE, replace=True)
    assert record.kind == "folder" and record.sha256 == _folder_sha(folder)
    assert catalog.get("table") == record
    assert not (catalog.storage_root / "data" / "table" / "v1.csv").exists()
    assert [r.name for r in catalog.list()] == ["table"]
    assert not [p for p in catalog.storage_root.iterdir() if p.name.startswith(".")]


def test_missing_source_is_named(catalog: Catalog, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ConfigError, match="no such file or folder") as caught:
        catalog.add("x", missing, Classification.SENSITIVE)
    assert caught.value.file == str(missing)
    assert catalog.list() == []


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 129])
def test_bad_names_are_refused(catalog: Catalog, tmp_path: Path, name: str) -> None:
    source = tmp_path / "f.csv"
    source.write_text("x")
    with pytest.raises(ConfigError, match="not a valid dataset name"):
        catalog.add(name, source, Classification.SENSITIVE)
    assert not (catalog.storage_root / "data").exists() or not any(
        (catalog.storage_root / "data").iterdir()
    )


def _silo_kit(root: Path, **declared: Classification) -> Kit:
    datasets = [{"name": n, "classification": c} for n, c in declared.items()]
    silo = SiloSpec.model_validate(
        {
            "name": "silo-a",
            "storage": {"root": str(root)},
            "compute": {"name": "silo-a-cpu"},
            "datasets": datasets,
        }
    )
    return Kit(
        federation="demo",
        role=Role.SILO,
        name="silo-a",
        orchestrator_host="127.0.0.1",
        orchestrator_port=8443,
        storage_root=str(root),
        approval_host="127.0.0.1",
        approval_port=8444,
        silo=silo,
    )


def test_declared_classification_cannot_be_lowered(tmp_path: Path) -> None:
    source = tmp_path / "digits.csv"
    source.write_text("1\n")
    kit = _silo_kit(tmp_path / "storage", digits=Classification.SENSITIVE)
    with pytest.raises(ClassificationError, match=r"'sensitive'.*'eyes_on'"):
        add_dataset(kit, "digits", source, Classification.EYES_ON)
    with pytest.raises(ClassificationError, match=r"'sensitive'.*'intermediate'"):
        add_dataset(kit, "digits", source, Classification.INTERMEDIATE)
    record = add_dataset(kit, "digits", source, Classification.SENSITIVE)
    assert record.classification is Classification.SENSITIVE
    with open_catalog(kit) as catalog:
        assert [r.name for r in catalog.list()] == ["digits"]


def test_stricter_or_undeclared_classification_is_accepted(tmp_path: Path) -> None:
    source = tmp_path / "digits.csv"
    source.write_text("1\n")
    kit = _silo_kit(tmp_path / "storage", public=Classification.EYES_ON)
    assert add_dataset(kit, "public", source, Classification.SENSITIVE).classification == (
        Classification.SENSITIVE
    )
    assert add_dataset(kit, "other", source, Classification.EYES_ON).classification == (
        Classification.EYES_ON
    )


def test_only_a_silo_has_a_catalog(tmp_path: Path) -> None:
    kit = Kit(
        federation="demo",
        role=Role.ORCHESTRATOR,
        name="orchestrator",
        orchestrator_host="127.0.0.1",
        orchestrator_port=8443,
        storage_root=str(tmp_path / "orch"),
    )
    with pytest.raises(ConfigError, match="not a silo"):
        open_catalog(kit)
    assert not (tmp_path / "orch").exists()


def test_public_api_is_exactly_all() -> None:
    import fedsilo.storage

    public = {name for name in vars(fedsilo.storage) if not name.startswith("_")}
    assert sorted(fedsilo.storage.__all__) == sorted(public)
