"""The helper that decides between using, skipping and failing on real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datasets.real_data import REQUIRE_ENV, real_data


def test_unset_data_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSILO_DATA", raising=False)
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="FEDSILO_DATA is not set"):
        real_data("fashion-mnist")


def test_unset_data_fails_when_data_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSILO_DATA", raising=False)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="FEDSILO_REQUIRE_DATA=1"):
        real_data("fashion-mnist")


def test_a_missing_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pneumoniamnist").mkdir()
    monkeypatch.setenv("FEDSILO_DATA", str(tmp_path))
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"pneumoniamnist/pneumoniamnist\.npz"):
        real_data("pneumoniamnist")


def test_present_files_give_the_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "wnut16").mkdir()
    (tmp_path / "wnut16" / "wnut16_train.txt").write_text("a\tO\n")
    monkeypatch.setenv("FEDSILO_DATA", str(tmp_path))
    assert real_data("wnut16") == tmp_path
