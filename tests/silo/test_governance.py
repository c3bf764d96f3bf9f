"""A silo's input checks: a dataset its catalog lacks is refused with the names it has."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.config import Classification
from fedsilo.silo._governance import missing_inputs, resolve_inputs
from fedsilo.storage import Catalog


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    source = tmp_path / "rows.csv"
    source.write_text("0.25,0.5,1\n")
    with Catalog(tmp_path / "storage", silo="silo-b") as opened:
        opened.add("digits-train", source, Classification.SENSITIVE)
        opened.add("digits-test", source, Classification.INTERMEDIATE)
        yield opened


def _task(**inputs: str) -> dict[str, str]:
    return inputs


def test_inputs_in_the_catalog_are_found(catalog: Catalog) -> None:
    inputs = resolve_inputs(_task(train="digits-train", test="digits-test"), catalog, "silo-b")
    assert [(i.role, i.found, i.classification) for i in inputs] == [
        ("test", True, Classification.INTERMEDIATE),
        ("train", True, Classification.SENSITIVE),
    ]


def test_a_mistyped_input_is_refused_with_the_name_meant(catalog: Catalog) -> None:
    inputs = resolve_inputs(_task(train="digits-trian", test="digits-test"), catalog, "silo-b")
    assert [i.found for i in inputs] == [True, False]
    reason = missing_inputs(inputs, catalog.names())
    assert reason == (
        "its catalog has no dataset 'digits-trian' (the job's input 'train'; did you mean "
        "'digits-train'?); its datasets: digits-test, digits-train"
    )


def test_the_refusal_names_datasets_and_nothing_else_of_them(catalog: Catalog) -> None:
    inputs = resolve_inputs(_task(train="xrays", test="scans"), catalog, "silo-b")
    reason = missing_inputs(inputs, catalog.names())
    assert "'scans' (the job's input 'test')" in reason
    assert "'xrays' (the job's input 'train')" in reason
    assert "its datasets: digits-test, digits-train" in reason
    assert "a dataset is added by the silo's administrator (fedsilo data add)" in reason
    record = catalog.get("digits-train")
    for detail in ("sensitive", "intermediate", record.sha256, str(record.size_bytes), "/"):
        assert detail not in reason


def test_an_input_of_another_storage_is_not_looked_up(catalog: Catalog) -> None:
    (only,) = resolve_inputs(_task(train="silo-a:digits-train"), catalog, "silo-b")
    assert (only.storage, only.path, only.found) == ("silo-a", None, True)
