"""The extras table of ``fedsilo._extras`` agrees with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from fedsilo._extras import EXTRAS, missing_extra

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
# the distribution that brings each module (flask comes with MLflow's server)
DISTRIBUTION = {"sklearn": "scikit-learn", "mlflow": "mlflow-skinny", "flask": "mlflow"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[;]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_each_module_comes_with_the_extra_it_names() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in EXTRAS.items():
        wanted = DISTRIBUTION.get(module, module)
        assert wanted in _names(extras[extra]), f"{module}: not in fedsilo[{extra}]"


def test_the_core_leaves_out_what_only_one_role_runs() -> None:
    core = _names(PYPROJECT["project"]["dependencies"])
    assert not core & {"mlflow", "mlflow-skinny", "sqlalchemy", "alembic", "matplotlib"}
    torch = next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch"))
    assert "==" not in torch  # a lower bound, so a silo can install its GPU build


def test_all_brings_every_extra_and_dev_brings_all() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    roles = {e for e in extras if e not in ("all", "dev")}
    assert extras["all"] == [f"fedsilo[{','.join(sorted(roles, key=list(extras).index))}]"]
    assert "fedsilo[all]" in extras["dev"]


def test_a_missing_module_names_its_extra() -> None:
    error = missing_extra(
        ModuleNotFoundError("No module named 'mlflow.tracking'", name="mlflow.tracking")
    )
    assert error is not None and "pip install 'fedsilo[orchestrator]'" in str(error)
    assert missing_extra(ModuleNotFoundError("x", name="numpy")) is None
