"""The public API is exactly what each package's ``__all__`` says, sorted and importable."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "fedsilo",
    "fedsilo.api",
    "fedsilo.approval",
    "fedsilo.audit",
    "fedsilo.config",
    "fedsilo.datasets",
    "fedsilo.errors",
    "fedsilo.jobs",
    "fedsilo.orchestrator",
    "fedsilo.pipelines",
    "fedsilo.privacy",
    "fedsilo.privacy.secagg",
    "fedsilo.quickstart",
    "fedsilo.runtime",
    "fedsilo.silo",
    "fedsilo.storage",
    "fedsilo.strategies",
    "fedsilo.task",
    "fedsilo.tensors",
    "fedsilo.tracking",
]


def _isort_key(symbol: str) -> tuple[int, str]:
    """Constants first, then classes, then functions (the order ruff keeps ``__all__`` in)."""
    if symbol.isupper():
        return (0, symbol)
    return (1 if symbol[:1].isupper() else 2, symbol)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key), f"{name}.__all__ is not sorted"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol} is in __all__ but missing"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and getattr(value, "__module__", "").startswith(name + ".")
        and attr not in ("annotations",)
    }
    assert public <= set(exported), (
        f"{name} exposes names missing from __all__: {public - set(exported)}"
    )


def test_errors_all_derive_from_the_root() -> None:
    from fedsilo import errors

    for symbol in errors.__all__:
        assert issubclass(getattr(errors, symbol), errors.FedsiloError)


def test_agents_import_neither_numpy_nor_the_server() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fedsilo.silo._agent, fedsilo.cli._app; "
        "bad = [m for m in ('numpy', 'torch', 'fastapi', 'uvicorn', 'sqlalchemy') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
