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
    "fedsilo.provisioning",
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

    tables = {"ERROR_CODES", "HTTP_STATUS", "error_class"}  # the wire codes of the tree
    for symbol in set(errors.__all__) - tables:
        assert issubclass(getattr(errors, symbol), errors.FedsiloError)
    assert tables <= set(errors.__all__)


def _imported(modules: str, heavy: tuple[str, ...]) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has loaded after importing ``modules``."""
    import subprocess
    import sys

    code = f"import sys, {modules}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_agents_import_neither_numpy_nor_the_server() -> None:
    heavy = ("numpy", "torch", "fastapi", "uvicorn", "sqlalchemy")
    assert _imported("fedsilo.silo._agent, fedsilo.cli._app", heavy) == []


def test_each_process_loads_only_what_it_runs() -> None:
    # A silo's approval endpoint shares only fedsilo.transport with the orchestrator:
    # loading the orchestrator (and Opacus, torch and SciPy with it) cost it 250 MB.
    server = ("fedsilo.orchestrator", "numpy", "torch", "opacus", "scipy", "sqlalchemy", "mlflow")
    assert _imported("fedsilo.approval._server", server) == []
    # The orchestrator loads torch and Opacus only for a job with central DP.
    assert _imported("fedsilo.orchestrator._server", ("torch", "opacus", "scipy")) == []
    # A job worker loads Opacus only when its job asks for local DP-SGD.
    assert _imported("fedsilo.task, fedsilo.silo._worker", ("opacus", "scipy", "mlflow")) == []
