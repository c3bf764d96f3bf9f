"""Privacy: local DP-SGD in silos, central DP at aggregation, secure aggregation.

The job spec's ``privacy`` section is here (light: silo agents import it); the mechanisms,
which need torch, Opacus or numpy, load on first use. Secure aggregation's state machines
are in :mod:`fedsilo.privacy.secagg`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedsilo.privacy._spec import (
    CentralDPSpec,
    LocalDPSpec,
    MaskPlan,
    PrivacySpec,
    SecureAggregationSpec,
    default_threshold,
)

if TYPE_CHECKING:
    from fedsilo.privacy._accounting import silence_opacus_warnings
    from fedsilo.privacy._central import CentralDP
    from fedsilo.privacy._clip import clip_update, clipped_delta
    from fedsilo.privacy._local import LocalDP, check_budget
    from fedsilo.privacy._secure import RoundPlan, mask_weights, round_plan, secure_global
    from fedsilo.privacy._wrap import strategy_for

__all__ = [
    "CentralDP",
    "CentralDPSpec",
    "LocalDP",
    "LocalDPSpec",
    "MaskPlan",
    "PrivacySpec",
    "RoundPlan",
    "SecureAggregationSpec",
    "check_budget",
    "clip_update",
    "clipped_delta",
    "default_threshold",
    "mask_weights",
    "round_plan",
    "secure_global",
    "silence_opacus_warnings",
    "strategy_for",
]

_LAZY = {
    "CentralDP": "_central",
    "clip_update": "_clip",
    "clipped_delta": "_clip",
    "LocalDP": "_local",
    "check_budget": "_local",
    "silence_opacus_warnings": "_accounting",
    "strategy_for": "_wrap",
    "RoundPlan": "_secure",
    "round_plan": "_secure",
    "mask_weights": "_secure",
    "secure_global": "_secure",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
