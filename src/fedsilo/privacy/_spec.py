"""The ``privacy`` section of a job spec: local DP-SGD, central DP, secure aggregation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CentralDPSpec",
    "LocalDPSpec",
    "MaskPlan",
    "PrivacySpec",
    "SecureAggregationSpec",
    "default_threshold",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def default_threshold(parties: int) -> int:
    """Secure aggregation's default threshold: a strict majority of ``parties``, at least 2."""
    return max(2, parties // 2 + 1)


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

    ``threshold`` is the fewest silos whose shares recover the sum (default: a strict
    majority of the job's silos); fewer survivors abort the round cleanly. Each silo masks
    its update (its parameters minus the round's global model), every value clipped to
    ``±clip_range`` and encoded with ``fixed_point_bits`` fractional bits. A silo that does
    not answer a stage within ``timeout_seconds`` (default: as long as it stays connected)
    counts as dropped, and stays out for the rest of the job.
    """

    model_config = _FROZEN

    threshold: Annotated[int | None, Field(ge=2)] = None
    fixed_point_bits: Annotated[int, Field(ge=8, le=40)] = 24
    clip_range: Annotated[float, Field(gt=0)] = 64.0
    timeout_seconds: Annotated[float | None, Field(gt=0)] = None

    def threshold_for(self, silos: int) -> int:
        """The threshold in force for a job of ``silos`` silos."""
        return self.threshold if self.threshold is not None else default_threshold(silos)


class MaskPlan(BaseModel):
    """How one silo encodes its masked input in one round; public, set by the orchestrator.

    Every silo of a round gets the same ``word_bits`` and ``weight_scale``. A silo encodes
    ``weight * weight_scale`` times its update in words of ``word_bits`` bits. With
    ``weight_limit`` it refuses a scaled weight above that limit: the orchestrator chose the
    limits so that, summed over the round's silos, no word can overflow. Without it each
    silo keeps to an equal share of the word's range, whatever the others' weights.

    32-bit words halve what a silo uploads and what every party computes; they fit when the
    weights are known ahead and normalised to sum to 1 (:func:`fedsilo.privacy.round_plan`).
    """

    model_config = _FROZEN

    word_bits: Literal[32, 64] = 64
    weight_scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    weight_limit: Annotated[float | None, Field(gt=0, allow_inf_nan=False)] = None


class PrivacySpec(BaseModel):
    """Cross-cutting privacy for a job; every part is optional."""

    model_config = _FROZEN

    local: LocalDPSpec | None = None
    central: CentralDPSpec | None = None
    secure_aggregation: SecureAggregationSpec | None = None
