"""The federation specs of the config tests, written to temporary files for these tests."""

from __future__ import annotations

from tests.config.conftest import demo_spec, write_spec

__all__ = ["demo_spec", "write_spec"]
