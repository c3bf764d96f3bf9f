"""Registers the ``slow`` marker used by the tracking UI test."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds (starts the MLflow UI)")
