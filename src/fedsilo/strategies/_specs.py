"""The typed ``strategy`` section of a job spec: one frozen model per strategy family.

``StrategySpec`` is a union discriminated on ``name``, so a job spec names its strategy and
gives only the parameters that strategy reads; unknown or irrelevant keys are errors, not
silently ignored settings. These models are pure pydantic: the job spec imports them, and
nothing here imports the job spec.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MEAN_STRATEGIES",
    "FedAvgSpec",
    "FedOptSpec",
    "FedProxSpec",
    "KrumSpec",
    "MedianSpec",
    "StrategySpec",
    "TrimmedMeanSpec",
    "Weighting",
]


class Weighting(StrEnum):
    """How the FedAvg family weighs each silo's parameters."""

    SAMPLES = "samples"
    UNIFORM = "uniform"
    EXPLICIT = "explicit"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_weights(weighting: Weighting, weights: dict[str, float] | None) -> None:
    """Explicit weighting needs weights ≥ 0, not all zero; other weightings take none."""
    if weighting is Weighting.EXPLICIT:
        if not weights:
            raise ValueError("weighting 'explicit' needs 'weights': a weight per silo")
        bad = [silo for silo, w in weights.items() if not w >= 0]
        if bad:
            raise ValueError(f"weights must be >= 0 (silo {', '.join(bad)})")
        if sum(weights.values()) <= 0:
            raise ValueError("weights must not all be zero")
    elif weights is not None:
        raise ValueError("'weights' is only used with weighting: explicit")


class FedAvgSpec(_Frozen):
    """Federated averaging: the weighted mean of the silos' parameters."""

    name: Literal["fedavg"] = "fedavg"
    weighting: Weighting = Weighting.SAMPLES
    weights: dict[str, float] | None = None

    @model_validator(mode="after")
    def _weights_match_weighting(self) -> FedAvgSpec:
        _check_weights(self.weighting, self.weights)
        return self


class FedProxSpec(_Frozen):
    """FedProx: FedAvg on the server; each silo adds ``proximal_mu/2·‖w - w_global‖²``."""

    name: Literal["fedprox"] = "fedprox"
    proximal_mu: float = Field(default=0.01, gt=0)
    weighting: Weighting = Weighting.SAMPLES
    weights: dict[str, float] | None = None

    @model_validator(mode="after")
    def _weights_match_weighting(self) -> FedProxSpec:
        _check_weights(self.weighting, self.weights)
        return self


_ADAPTIVE_ONLY = ("beta1", "beta2", "tau")


class FedOptSpec(_Frozen):
    """A server optimizer applied to the mean update (Reddi et al. 2021).

    ``server_lr`` defaults to 1.0 for ``fedavgm`` (plain FedAvg when momentum is 0) and to
    0.01 for the adaptive variants. ``server_momentum`` is read by ``fedavgm`` only;
    ``beta1``, ``beta2`` and ``tau`` by the adaptive ones (``fedadagrad`` has no ``beta2``).
    Setting a parameter the chosen variant does not read is an error.
    """

    name: Literal["fedavgm", "fedadam", "fedyogi", "fedadagrad"]
    server_lr: float | None = Field(default=None, gt=0)
    server_momentum: float = Field(default=0.9, ge=0, lt=1)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-3, gt=0)
    weighting: Weighting = Weighting.SAMPLES
    weights: dict[str, float] | None = None

    @model_validator(mode="after")
    def _parameters_match_variant(self) -> FedOptSpec:
        if self.server_lr is None:
            # the variant's default, filled in without counting as set: a spec written
            # back out (or swept to another variant) does not carry it as the user's value
            object.__setattr__(self, "server_lr", 1.0 if self.name == "fedavgm" else 0.01)
        _check_weights(self.weighting, self.weights)
        # set, and to something else than its default: a spec's own JSON (every field
        # written out, as it travels to the orchestrator) must read back as the same spec
        given = {
            key
            for key in self.model_fields_set
            if getattr(self, key) != type(self).model_fields[key].default
        }
        if self.name == "fedavgm":
            unread = [key for key in _ADAPTIVE_ONLY if key in given]
        else:
            unread = [key for key in ("server_momentum",) if key in given]
            if self.name == "fedadagrad" and "beta2" in given:
                unread.append("beta2")
        if unread:
            raise ValueError(f"strategy '{self.name}' does not use {', '.join(unread)}")
        return self


class MedianSpec(_Frozen):
    """Coordinate-wise median of the silos' parameters (robust to a minority of outliers)."""

    name: Literal["median"] = "median"


class TrimmedMeanSpec(_Frozen):
    """Coordinate-wise mean after dropping ``⌊trim_ratio·n⌋`` lowest and highest values."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    trim_ratio: float = Field(default=0.1, ge=0, lt=0.5)


class KrumSpec(_Frozen):
    """Krum picks the one update closest to its neighbours; Multi-Krum averages the ``select``
    best (Blanchard et al. 2017). ``byzantine`` is f, the number of silos it tolerates;
    ``select`` (m) defaults to n - f for ``multi_krum`` and is always 1 for ``krum``.
    """

    name: Literal["krum", "multi_krum"]
    byzantine: int = Field(default=1, ge=0)
    select: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _select_only_for_multi_krum(self) -> KrumSpec:
        if self.name == "krum" and self.select not in (None, 1):
            raise ValueError("'select' is only used with name: multi_krum (krum selects one)")
        return self


StrategySpec = Annotated[
    Union[FedAvgSpec, FedProxSpec, FedOptSpec, MedianSpec, TrimmedMeanSpec, KrumSpec],  # noqa: UP007
    Field(discriminator="name"),
]
"""Any strategy's spec, chosen by its ``name``."""

MEAN_STRATEGIES = frozenset({"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"})
"""Strategies that need only the silos' weighted mean, and so run under secure aggregation."""
