"""Local DP-SGD in a silo (Opacus), with one accountant for the whole FL job.

A silo's training data is touched in every round, so its privacy budget is spent by the
*job*, not by a round: :class:`LocalDP` keeps one ``PrivacyEngine`` (hence one accountant)
for the whole job, and every round's optimizer steps add to that accountant's history.
Restarting the accountant each round, as naive per-round ``make_private`` calls do,
reports a fraction of the real spend.

Noise comes from a ``torch.Generator`` seeded from the OS's secure source (``secrets``),
and so does Poisson sampling: Opacus's ``secure_mode`` needs torchcsprng, which cannot be
installed here, and without it Opacus would draw from torch's global, job-seeded RNG.
The generator itself is a fast PRNG, not a CSPRNG: docs/security.md states that limit.
Tests may pass ``seed`` to make runs reproducible.

Models with BatchNorm (or any layer Opacus cannot give per-sample gradients for) are
refused with a clear error rather than silently rewritten: rewriting would change the
architecture every silo and the orchestrator agree on. The data scientist swaps in
GroupNorm, or returns ``opacus.validators.ModuleValidator.fix(model)`` from ``model()``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping
from typing import Any

import torch
from opacus import PrivacyEngine  # type: ignore[import-untyped]
from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]
from opacus.data_loader import DPDataLoader  # type: ignore[import-untyped]
from opacus.grad_sample import AbstractGradSampleModule  # type: ignore[import-untyped]
from opacus.validators import ModuleValidator  # type: ignore[import-untyped]
from torch.utils.data import DataLoader

from fedsilo._distributed import Distributed
from fedsilo.errors import ConfigError, PrivacyBudgetExceeded
from fedsilo.privacy._accounting import (
    HistoryEntry,
    epsilon_of,
    history_from_json,
    history_to_json,
    silence_opacus_warnings,
)
from fedsilo.privacy._spec import LocalDPSpec

__all__ = ["LocalDP", "PrivacyBudgetExceeded", "check_budget"]

_STATE_FORMAT = 1
_TOLERANCE = 1.01  # spend may exceed target_epsilon by at most 1 % (accountant rounding)


def check_budget(spec: LocalDPSpec, cap: float | None) -> None:
    """Refuse a job whose declared ``target_epsilon`` is above a silo's policy ``cap``.

    A spec that gives a noise multiplier instead declares no epsilon: what it spends
    depends on the silo's data, so :class:`LocalDP` (given the same ``epsilon_cap``)
    refuses it before its first round when the whole job would pass the cap.
    """
    if cap is None or spec.target_epsilon is None:
        return
    if spec.target_epsilon > cap:
        raise PrivacyBudgetExceeded(
            f"the job asks for local DP with target_epsilon={spec.target_epsilon:g}, above "
            f"this silo's cap of {cap:g}",
            epsilon=spec.target_epsilon,
            limit=cap,
        )


def _derived_seed(seed: int, round_: int, purpose: str) -> int:
    digest = hashlib.sha256(f"fedsilo-local-dp:{seed}:{round_}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


class LocalDP:
    """DP-SGD for one silo over one FL job: wraps each round's training, accounts the job.

    Built once per silo per job (the worker keeps it across rounds) from the job's
    ``LocalDPSpec``, its total ``rounds`` and the local ``epochs`` per round. With a
    ``target_epsilon`` the noise multiplier is computed once, at the first round, for all
    ``rounds * epochs * steps_per_epoch`` steps, and reused every round. ``epsilon_cap`` is
    the silo's own policy cap, enforced before each round on the projected spend.
    """

    def __init__(
        self,
        spec: LocalDPSpec,
        *,
        rounds: int,
        epochs: int,
        epsilon_cap: float | None = None,
        seed: int | None = None,
    ) -> None:
        if rounds < 1 or epochs < 1:
            raise ConfigError(f"local DP needs rounds >= 1 and epochs >= 1, got {rounds}, {epochs}")
        check_budget(spec, epsilon_cap)
        self.spec = spec
        self.rounds = rounds
        self.epochs = epochs
        self.epsilon_cap = epsilon_cap
        self.seed = seed
        with silence_opacus_warnings():
            self._engine: Any = PrivacyEngine(accountant=spec.accountant)
        self._noise: float | None = spec.noise_multiplier
        self._rounds_seen: set[int] = set()
        self._wrapped: Any = None

    @property
    def noise_multiplier(self) -> float | None:
        """The job's noise multiplier (None until the first round when it derives from epsilon)."""
        return self._noise

    @property
    def history(self) -> list[HistoryEntry]:
        """The accountant's history so far: ``(noise_multiplier, sample_rate, steps)``."""
        return [(float(s), float(q), int(n)) for s, q, n in self._engine.accountant.history]

    def epsilon(self) -> float:
        """Epsilon spent so far by this silo in this job, at the spec's ``target_delta``."""
        return epsilon_of(self.spec.accountant, self.history, self.spec.target_delta)

    def _limit(self) -> float | None:
        limits = [cap for cap in (self.epsilon_cap,) if cap is not None]
        if self.spec.target_epsilon is not None:
            limits.append(self.spec.target_epsilon * _TOLERANCE)
        return min(limits) if limits else None

    def _generator(self, device: torch.device, round_: int, purpose: str) -> torch.Generator:
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.manual_seed(secrets.randbits(63))
        else:
            generator.manual_seed(_derived_seed(self.seed, round_, purpose))
        return generator

    def make_private(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        *,
        round_: int,
        distributed: Distributed | None = None,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        """Wrap one round's training objects for DP-SGD; train through what it returns.

        The returned module shares its parameters with ``model``, so ``model`` (with its
        original parameter names) holds the trained weights afterwards. The returned data
        loader samples Poisson batches; the optimizer clips and noises per-sample
        gradients and records each step in the job's accountant. Raises
        :class:`PrivacyBudgetExceeded` before training when this round would take the job
        past its limit, and from ``optimizer.step()`` if training goes past it anyway.

        With ``distributed`` ranks (torch.distributed), ``data_loader`` is over the silo's
        whole data in every rank: each rank Poisson-samples its share of it at the same
        rate, the clipped gradients are summed over the ranks and noised once (rank 0),
        so the accountant of every rank records what one process would, and epsilon is
        the same as with one process over the same data.
        """
        ranks = distributed if distributed is not None and distributed.world_size > 1 else None
        if isinstance(model, AbstractGradSampleModule):
            model = model.to_standard_module()
        self._release_wrapper()
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(
                "the model cannot be trained with DP-SGD: "
                + "; ".join(str(e) for e in errors)
                + ". Use GroupNorm instead of BatchNorm in model(), or return "
                "opacus.validators.ModuleValidator.fix(model) from model()."
            )
        if len(data_loader) == 0:
            raise ConfigError("local DP needs a non-empty training data loader")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        # each rank samples its own share of the data, from a stream of its own
        sampling = "sampling" if ranks is None else f"sampling-rank-{ranks.rank}"
        with silence_opacus_warnings():
            if ranks is not None:
                from opacus.distributed import (  # type: ignore[import-untyped]
                    DifferentiallyPrivateDistributedDataParallel,
                )

                model = DifferentiallyPrivateDistributedDataParallel(model)
            dp_loader = DPDataLoader.from_data_loader(
                data_loader,
                generator=self._generator(torch.device("cpu"), round_, sampling),
                distributed=ranks is not None,
            )
            # Opacus accounts with 1 / len(loader) and steps len(loader) times per epoch;
            # planning with the same numbers keeps the plan and the accountant in step.
            steps_per_epoch = len(dp_loader)
            sample_rate = 1.0 / steps_per_epoch
            noise = self._plan(sample_rate, steps_per_epoch)
            self._check_projection(noise, sample_rate, steps_per_epoch, round_)
            module, dp_optimizer, loader = self._engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=dp_loader,
                noise_multiplier=noise,
                max_grad_norm=self.spec.max_grad_norm,
                poisson_sampling=False,  # dp_loader already samples Poisson batches
                noise_generator=self._generator(device, round_, "noise"),
            )
        module.forbid_grad_accumulation()
        self._guard_steps(dp_optimizer, planned=self.epochs * steps_per_epoch)
        self._rounds_seen.add(round_)
        self._wrapped = module
        return module, dp_optimizer, loader

    def _plan(self, sample_rate: float, steps_per_epoch: int) -> float:
        if self._noise is None:
            assert self.spec.target_epsilon is not None  # LocalDPSpec requires one of the two
            try:
                self._noise = float(
                    get_noise_multiplier(
                        target_epsilon=self.spec.target_epsilon,
                        target_delta=self.spec.target_delta,
                        sample_rate=sample_rate,
                        steps=self.rounds * self.epochs * steps_per_epoch,
                        accountant=self.spec.accountant,
                    )
                )
            except ValueError as exc:
                raise PrivacyBudgetExceeded(
                    f"no noise multiplier reaches target_epsilon={self.spec.target_epsilon:g} "
                    f"over {self.rounds} rounds x {self.epochs} epochs: {exc}",
                    epsilon=math.inf,
                    limit=self.spec.target_epsilon,
                ) from exc
        return self._noise

    def _check_projection(
        self, noise: float, sample_rate: float, steps_per_epoch: int, round_: int
    ) -> None:
        limit = self._limit()
        if limit is None:
            return
        rounds_left = max(self.rounds - len(self._rounds_seen - {round_}), 1)
        planned = (noise, sample_rate, rounds_left * self.epochs * steps_per_epoch)
        projected = epsilon_of(
            self.spec.accountant, [*self.history, planned], self.spec.target_delta
        )
        if projected > limit:
            raise PrivacyBudgetExceeded(
                f"round {round_}: the job would spend epsilon={projected:.4g} on this silo's "
                f"data by its end, above the limit of {limit:.4g}",
                epsilon=projected,
                limit=limit,
            )

    def _guard_steps(self, optimizer: Any, *, planned: int) -> None:
        """Chain a budget check after the accountant's step hook (Opacus keeps one hook)."""
        accountant_hook = optimizer.step_hook
        limit = self._limit()
        taken = 0

        def hook(opt: Any) -> None:
            nonlocal taken
            accountant_hook(opt)
            taken += 1
            if limit is not None and taken > planned and self.epsilon() > limit:
                raise PrivacyBudgetExceeded(
                    f"training went past the planned {planned} steps this round and the job "
                    f"has now spent epsilon={self.epsilon():.4g}, above the limit of {limit:.4g}",
                    epsilon=self.epsilon(),
                    limit=limit,
                )

        optimizer.attach_step_hook(hook)

    def _release_wrapper(self) -> None:
        if self._wrapped is not None:
            self._wrapped.to_standard_module()  # removes last round's hooks from the model
            self._wrapped = None

    def close(self) -> None:
        """Remove Opacus's hooks from the last wrapped model (the accounting is kept)."""
        self._release_wrapper()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable accounting state, for the silo's work folder between processes.

        Holds the accountant's history and the job's noise multiplier, never generator
        state: a persisted noise seed would let anyone with the file subtract the noise.
        """
        return {
            "format": _STATE_FORMAT,
            "accountant": self.spec.accountant,
            "history": history_to_json(self.history),
            "noise_multiplier": self._noise,
            "rounds": sorted(self._rounds_seen),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the accounting saved by :meth:`state_dict` (same job, same accountant)."""
        if state.get("format") != _STATE_FORMAT:
            raise ConfigError(f"unknown local DP state format {state.get('format')!r}")
        if state.get("accountant") != self.spec.accountant:
            raise ConfigError(
                f"local DP state was kept by the {state.get('accountant')!r} accountant, "
                f"but the job uses {self.spec.accountant!r}"
            )
        noise = state.get("noise_multiplier")
        rounds = state.get("rounds", [])
        try:
            history = history_from_json(state.get("history"))
        except ValueError as exc:
            raise ConfigError(f"local DP state: {exc}") from exc
        if noise is not None and (not isinstance(noise, int | float) or noise <= 0):
            raise ConfigError(f"local DP state: bad noise multiplier {noise!r}")
        if not isinstance(rounds, list) or not all(isinstance(r, int) for r in rounds):
            raise ConfigError(f"local DP state: bad rounds {rounds!r}")
        self._engine.accountant.history = history
        self._noise = None if noise is None else float(noise)
        self._rounds_seen = set(rounds)
