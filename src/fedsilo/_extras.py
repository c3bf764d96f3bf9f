"""Which extra of the ``fedsilo`` package brings which module, and the error for one missing.

A silo installs ``fedsilo[silo]``, an orchestrator ``fedsilo[orchestrator]``, a person who
reads results ``fedsilo[tracking]`` (pyproject.toml). A command that reaches for a module its
machine did not install says which extra brings it, instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib.util

from fedsilo.errors import ConfigError

__all__ = ["EXTRAS", "missing_extra", "require"]

#: top-level module -> the extra that installs it
EXTRAS: dict[str, str] = {
    "sqlalchemy": "orchestrator",
    "alembic": "orchestrator",
    "mlflow": "orchestrator",
    "flask": "tracking",
    "matplotlib": "tracking",
    "sklearn": "silo",
    "psycopg": "postgres",
}


def _error(module: str, extra: str, purpose: str | None) -> ConfigError:
    needs = f"{purpose} needs" if purpose else "this command needs"
    return ConfigError(
        f"{needs} the Python module '{module}', which is not installed on this machine; "
        f"it comes with the '{extra}' extra: pip install 'fedsilo[{extra}]' "
        "(with -c constraints.txt to keep torch's CPU build)"
    )


def missing_extra(exc: ModuleNotFoundError) -> ConfigError | None:
    """The error naming the extra that brings the module ``exc`` could not import, if any."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    return None if extra is None else _error(module, extra, None)


def require(module: str, *, purpose: str) -> None:
    """Raise a :class:`ConfigError` naming the extra to install when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise _error(module, EXTRAS[module], purpose)
