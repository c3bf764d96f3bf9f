"""The ``privacy`` section of a job spec: local DP-SGD, central DP, secure aggregation."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CentralDPSpec", "LocalDPSpec", "PrivacySpec", "SecureAggregationSpec"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class LocalDPSpec(BaseModel):
    """DP-SGD in every silo (Opacus): a target (epsilon, delta) or a noise multiplier.

    The budget covers the whole job (every round times every local epoch); each silo's
    accountant keeps its state across rounds.
    """

    model_config = _FROZEN

    target_epsilon: Annotated[float | None, Field(gt=0)] = None
    target_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    noise_multiplier: Annotated[float | None, Field(gt=0)] = None
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    accountant: str = Field(default="rdp", pattern="^(rdp|prv)$")

    @model_validator(mode="after")
    def _one_way(self) -> LocalDPSpec:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give either target_epsilon or noise_multiplier (exactly one)")
        return self


class CentralDPSpec(BaseModel):
    """Silo-level DP-FedAvg: each silo's update clipped to ``clip_norm``, Gaussian noise of
    standard deviation ``noise_multiplier * clip_norm`` added to the sum of updates."""

    model_config = _FROZEN

    clip_norm: Annotated[float, Field(gt=0)] = 1.0
    noise_multiplier: Annotated[float, Field(ge=0)] = 1.0
    target_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5


class SecureAggregationSpec(BaseModel):
    """Pairwise masking: the orchestrator only sees the sum of the silos' updates.

    ``threshold`` is the fewest silos whose shares recover the sum (default: a majority);
    fewer survivors abort the round cleanly.
    """

    model_config = _FROZEN

    threshold: Annotated[int | None, Field(ge=2)] = None
    fixed_point_bits: Annotated[int, Field(ge=8, le=40)] = 24
    clip_range: Annotated[float, Field(gt=0)] = 64.0


class PrivacySpec(BaseModel):
    """Cross-cutting privacy for a job; every part is optional."""

    model_config = _FROZEN

    local: LocalDPSpec | None = None
    central: CentralDPSpec | None = None
    secure_aggregation: SecureAggregationSpec | None = None
