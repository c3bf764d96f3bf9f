"""Central DP at aggregation: DP-FedAvg with silo-level clipping and Gaussian noise.

Follows McMahan et al. 2018 ("Learning Differentially Private Recurrent Language
Models") with every silo taking part in every round: each silo's update
``delta = params - current`` is clipped to L2 norm ``clip_norm`` over all its tensors
together, the clipped updates are averaged with *uniform* weights over the ``n`` silos
that reported, and the mean gets Gaussian noise of standard deviation
``noise_multiplier * clip_norm / n`` per coordinate. Uniform weights are what bound one
silo's influence (its sensitivity) by ``clip_norm``; sample-weighted averaging would not.

:class:`CentralDP` wraps an inner strategy: the inner one configures rounds (learning
rates, proximal terms...), the wrapper replaces its aggregation by the clipped, noised
mean, and accounts each round as one step of the sampled Gaussian mechanism with sample
rate 1 under Opacus's RDP accountant. With secure aggregation the orchestrator only sees
a sum: silos clip their own update (:func:`clipped_delta`, :func:`clip_update`) and the
orchestrator calls :meth:`CentralDP.add_noise_to_sum`.

Noise comes from numpy's PCG64 seeded with 128 bits from ``secrets`` each round, or from
a per-round seed derived from ``seed`` in tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.errors import AggregationError, ConfigError
from fedsilo.privacy._accounting import epsilon_of, history_from_json, history_to_json
from fedsilo.privacy._clip import cast_like, clip_scale, norm_of_delta
from fedsilo.privacy._spec import CentralDPSpec
from fedsilo.strategies._base import Aggregation, Strategy
from fedsilo.strategies._updates import check_layout, layout_of, open_update
from fedsilo.tensors import Parameters

__all__ = ["CentralDP", "RoundPrivacy"]

Arrays = dict[str, npt.NDArray[np.generic]]
_STATE_FORMAT = 1


@dataclass(frozen=True)
class RoundPrivacy:
    """The privacy spent by the job up to and including ``round``, at ``delta``."""

    round: int
    epsilon: float
    delta: float
    silos: int


class CentralDP:
    """DP-FedAvg around an inner strategy: clipped, uniformly weighted, noised updates.

    ``configure_round`` is the inner strategy's; ``begin_aggregation`` streams the silos'
    clipped updates into one running sum (memory: the model, twice, whatever the number
    of silos). ``num_samples`` is ignored: uniform weights are what the privacy
    guarantee rests on. A silo that fails only leaves the round with fewer updates; the
    accountant still counts the round for everyone.
    """

    def __init__(self, inner: Strategy, spec: CentralDPSpec, *, seed: int | None = None) -> None:
        self.inner = inner
        self.spec = spec
        self.seed = seed
        from opacus.accountants import RDPAccountant  # type: ignore[import-untyped]

        self._accountant: Any = RDPAccountant()
        self._report: list[RoundPrivacy] = []

    def configure_round(self, round_: int, silos: Sequence[str]) -> dict[str, dict[str, float]]:
        """The inner strategy's per-silo configuration, unchanged."""
        return self.inner.configure_round(round_, silos)

    def begin_aggregation(self, round_: int, current: Parameters | None) -> Aggregation:
        """A streaming, clipped mean of this round's updates relative to ``current``."""
        if current is None:
            raise AggregationError(
                "central DP needs the current global parameters: updates are clipped "
                "relative to them"
            )
        return _ClippedMean(self, round_, current)

    def add_noise_to_sum(
        self,
        sum_of_clipped_deltas: Parameters,
        n: int,
        current: Parameters,
        *,
        round_: int,
    ) -> Arrays:
        """New global parameters from the sum of ``n`` silos' clipped updates.

        For secure aggregation, where silos clip (:func:`clipped_delta`) and the
        orchestrator only sees the sum. Gives the same result as the streaming path for
        the same seed, round and updates; counts the round in the accountant.
        """
        if n < 1:
            raise AggregationError("no silo's update is in the sum")
        if set(sum_of_clipped_deltas) != set(current):
            raise AggregationError(
                "the sum's tensors differ from the global model's: "
                f"{sorted(set(sum_of_clipped_deltas) ^ set(current))}"
            )
        sums: dict[str, npt.NDArray[np.float64]] = {}
        for name, base in current.items():
            value = np.array(sum_of_clipped_deltas[name], dtype=np.float64)  # a copy
            if value.shape != np.shape(base):
                raise AggregationError(f"the sum's tensor '{name}' has shape {value.shape}")
            sums[name] = value
        return self._release(round_, sums, n, current)

    def _rng(self, round_: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.Generator(np.random.PCG64(secrets.randbits(128)))
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, round_])))

    def _release(
        self, round_: int, sums: dict[str, npt.NDArray[np.float64]], n: int, current: Parameters
    ) -> Arrays:
        """Noise the sum (in place: ``sums`` is ours), average, add to ``current``, account."""
        std = self.spec.noise_multiplier * self.spec.clip_norm
        rng = self._rng(round_)
        out: Arrays = {}
        for name, base in current.items():  # one fixed order, for reproducible noise
            acc = sums[name]
            if std > 0:
                acc += rng.normal(0.0, std, size=acc.shape)
            base_arr = np.asarray(base)
            out[name] = cast_like(base_arr.astype(np.float64) + acc / n, base_arr.dtype)
        self._accountant.step(noise_multiplier=self.spec.noise_multiplier, sample_rate=1.0)
        self._report.append(RoundPrivacy(round_, self.epsilon(), self.spec.target_delta, silos=n))
        return out

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's history: ``(noise_multiplier, 1.0, rounds)`` entries."""
        return [(float(s), float(q), int(k)) for s, q, k in self._accountant.history]

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent by the rounds released so far (``delta``: the spec's by default)."""
        return epsilon_of("rdp", self.history, self.spec.target_delta if delta is None else delta)

    def report(self) -> tuple[RoundPrivacy, ...]:
        """Per round released: the job's cumulative epsilon after it."""
        return tuple(self._report)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable accounting state (history and report; never noise seeds)."""
        return {
            "format": _STATE_FORMAT,
            "history": history_to_json(self.history),
            "report": [[r.round, r.epsilon, r.delta, r.silos] for r in self._report],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the accounting saved by :meth:`state_dict`."""
        if state.get("format") != _STATE_FORMAT:
            raise ConfigError(f"unknown central DP state format {state.get('format')!r}")
        try:
            history = history_from_json(state.get("history"))
            report = [
                RoundPrivacy(int(r), float(e), float(d), silos=int(s))
                for r, e, d, s in state.get("report", [])
            ]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"central DP state: {exc}") from exc
        self._accountant.history = history
        self._report = report


class _ClippedMean:
    """One round's running sum of clipped updates, in float64."""

    def __init__(self, owner: CentralDP, round_: int, current: Parameters) -> None:
        self._owner = owner
        self._round = round_
        self._current = current
        self._layout = layout_of(current)
        self._sums: dict[str, npt.NDArray[np.float64]] = {
            name: np.zeros(np.shape(base), dtype=np.float64) for name, base in current.items()
        }
        self._silos: list[str] = []
        self._finished = False

    def add(self, silo: str, params: Parameters | Path, num_samples: int) -> None:
        """Clip ``params - current`` to ``clip_norm`` and add it to the sum.

        ``params`` may be a safetensors file, read one tensor at a time (twice: once for
        the update's norm, once to add it). A refused update leaves the sum unchanged.
        """
        if self._finished:
            raise AggregationError("this round's aggregation has already finished")
        if silo in self._silos:
            raise AggregationError(f"silo '{silo}' sent two results for one round")
        with open_update(silo, params) as update:
            check_layout(update, self._layout)
            norm = norm_of_delta(update.tensor, self._current, f"silo '{silo}'")
            scale = clip_scale(norm, self._owner.spec.clip_norm)
            for name, base in self._current.items():
                diff = np.asarray(update.tensor(name), np.float64) - np.asarray(base, np.float64)
                self._sums[name] += scale * diff
        self._silos.append(silo)

    def finish(self, failures: Sequence[str] = ()) -> Arrays:
        """The new global parameters: current plus the noised mean of clipped updates."""
        if self._finished:
            raise AggregationError("this round's aggregation has already finished")
        if not self._silos:
            missing = f" (missing: {', '.join(sorted(failures))})" if failures else ""
            raise AggregationError(f"no silo sent a result to aggregate{missing}")
        self._finished = True
        return self._owner._release(self._round, self._sums, len(self._silos), self._current)
