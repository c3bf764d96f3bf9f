"""Where tests find the real public datasets, and what they do when those are absent.

Tests that read a dataset from ``$FEDSILO_DATA`` ask :func:`real_data` for its root. When
the variable is unset, or the dataset's files are not there, the test is skipped with the
reason; with ``FEDSILO_REQUIRE_DATA=1`` (as in CI, which points ``FEDSILO_DATA`` at its
copy) it fails instead, so a missing dataset cannot silently skip what CI must check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedsilo.datasets import DATA_ENV, SOURCES

REQUIRE_ENV = "FEDSILO_REQUIRE_DATA"


def real_data(dataset: str) -> Path:
    """The data root holding ``dataset``'s original files; skip (or fail) without them."""
    required = os.environ.get(REQUIRE_ENV, "") == "1"
    root = os.environ.get(DATA_ENV, "").strip()
    source = SOURCES[dataset]
    if not root:
        reason = f"{DATA_ENV} is not set: the {source.title} tests need it"
    else:
        missing = [f for f in source.files if not (Path(root) / source.folder / f).is_file()]
        if not missing:
            return Path(root)
        reason = f"{DATA_ENV}={root} lacks {source.folder}/{missing[0]} ({source.title})"
    if required:
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    pytest.skip(reason)
