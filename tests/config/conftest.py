"""Federation specs written to temporary files for the config tests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

DEMO_SPEC = (Path(__file__).parent / "demo_federation.yaml").read_text(encoding="utf-8")
"""The demo federation: an orchestrator, silos ``silo-a`` and ``silo-b``, one submitter."""

WriteSpec = Callable[[str], Path]


@pytest.fixture
def write_spec(tmp_path: Path) -> WriteSpec:
    """Write YAML text (dedented) to a fresh ``federation.yaml`` and return its path."""
    counter = iter(range(1_000))

    def write(text: str) -> Path:
        folder = tmp_path / f"spec{next(counter)}"
        folder.mkdir()
        path = folder / "federation.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def demo_spec(write_spec: WriteSpec) -> Path:
    """The demo federation: an orchestrator, silos ``silo-a`` and ``silo-b``, one submitter."""
    return write_spec(DEMO_SPEC)
